"""What produced a result: the CPU and the versions of the libraries whose kernels decide its bits.

Recorded in every evaluate metrics file, so two runs whose values differ can be told apart by
machine type or environment (README, Repeatability: one machine type to the next). Reads only
``/proc/cpuinfo`` and package metadata: nothing is imported.
"""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

# the libraries whose numerics reach the metrics (torch kernels, BLAS via numpy/scipy, readers, models)
LIBRARIES = ("torch", "numpy", "scipy", "scikit-learn", "polars", "pyarrow", "transformers", "peft", "xlstm",
             "drain3")
# CPU features that select different kernels (README, Repeatability)
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu() -> dict[str, str]:
    """Vendor, model name and the kernel-selecting flags of the first CPU ("unknown" off Linux)."""
    info = {"vendor": "unknown", "model": platform.processor() or "unknown", "flags": ""}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    first = text.split("\n\n", 1)[0]
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"vendor": fields.get("vendor_id", info["vendor"]), "model": fields.get("model name", info["model"]),
            "flags": " ".join(f for f in FLAGS if f in flags)}


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed version of each distribution ("absent" when not installed)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def environment() -> dict[str, dict[str, str]]:
    return {"cpu": cpu(), "libraries": library_versions()}
