"""DVC's own bookkeeping: how long it takes to read this pipeline's ``dvc.yaml``/``dvc.lock``.

    python -m stages.bench dvc [--repeat 3] [--root .]

dvc loads both files with ruamel's safe loader several times per stage and rewrites ``dvc.lock``
after each one. Since ruamel.yaml 0.19 the C parser is an opt-in (the project depends on
``ruamel.yaml.clib``). This measures, in the same run and as ratios, the C loader against the
pure-Python one it replaces: one parse of each file in this process (best of ``--repeat``), and
``dvc status`` in fresh processes, alternating, with the pure parser forced in every other one.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# a fresh `dvc status`; argv[1] == "pure" hides the C parser from ruamel before dvc imports it
_STATUS = r"""
import sys
if sys.argv[1] == "pure":
    import ruamel.yaml.main
    ruamel.yaml.main.CParser = ruamel.yaml.main.CEmitter = None
from dvc.cli import main
raise SystemExit(main(["status", "--quiet"]))
"""


def _best_parse(text: str, pure: bool, typ: str, repeat: int) -> float:
    from ruamel.yaml import YAML

    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        YAML(typ=typ, pure=pure).load(text)
        best = min(best, time.perf_counter() - t0)
    return best


def _status_seconds(root: Path, parser: str) -> float:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _STATUS, parser], cwd=root, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode not in (0, 1):  # 1: something changed, still a full status
        raise RuntimeError(f"dvc status ({parser} parser) in {root} failed: {done.stderr.strip()[-500:]}")
    return seconds


def bench_dvc(root: Path, repeat: int) -> dict:
    from ruamel.yaml import YAML

    c_parser = "_ruamel_yaml" in YAML(typ="safe").Parser.__module__
    parses = {}
    for name in ("dvc.yaml", "dvc.lock"):
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; run from the repository root or pass --root")
        text = path.read_text(encoding="utf-8")
        c = _best_parse(text, False, "safe", repeat)
        pure = _best_parse(text, True, "safe", repeat)
        parses[name] = {"bytes": len(text.encode()), "safe_c_s": round(c, 4), "safe_pure_s": round(pure, 4),
                        "round_trip_s": round(_best_parse(text, True, "rt", repeat), 4),
                        "pure_over_c": round(pure / c, 2)}
    status = {"c": [], "pure": []}
    for _ in range(repeat):
        for parser in ("pure", "c"):
            status[parser].append(_status_seconds(root, parser))
    med = {k: statistics.median(v) for k, v in status.items()}
    rows = [f"| parse {n} ({p['bytes'] // 1024} KiB), safe loader | {p['safe_c_s']:.3f} s | "
            f"{p['safe_pure_s']:.3f} s | {p['pure_over_c']:.1f}× |" for n, p in parses.items()]
    rows.append(f"| `dvc status`, fresh process, median of {repeat} | {med['c']:.2f} s | {med['pure']:.2f} s | "
                f"{med['pure'] / med['c']:.1f}× |")
    table = "\n".join(["| what | C parser | pure-Python parser | ratio |", "|---|---:|---:|---:|", *rows])
    return {"c_parser_installed": c_parser, "parse": parses,
            "dvc_status_s": {k: [round(x, 3) for x in v] for k, v in status.items()},
            "dvc_status_median_s": {k: round(v, 3) for k, v in med.items()}, "table": table}
