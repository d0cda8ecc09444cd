"""``report.html``: one self-contained page (inline SVG and CSS, no script, no network).

Top: score and threshold over time with alarms shaded; below, one lane per modality on the same
time axis (the detector's own per-modality score where it has one, else how far the modality's
features sit from their training median); then one card per alarm with its contributors and the
series around it of its top units (the detector's own top contributors where they name feature
units, else the features farthest from their training median; in their own units, saturating at
the clip of the frozen scaling); then the drift findings.
Long runs are drawn from bucket maxima (``MAX_POINTS`` per line), so spikes stay visible.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

MAX_POINTS = 2000
W, H_MAIN, H_LANE, H_SPARK, W_SPARK, PAD = 1000, 220, 70, 60, 320, 40
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px} .meta{color:#555;font-size:13px}
svg{display:block;background:#fafafa;border:1px solid #ddd;margin:4px 0}
.score{fill:none;stroke:#1f77b4;stroke-width:1.2}
.threshold{fill:none;stroke:#d62728;stroke-width:1;stroke-dasharray:4 3}
.alarm{fill:#d62728;fill-opacity:.18} .alarm-band{fill:#d62728;fill-opacity:.12}
.lane-line{fill:none;stroke:#444;stroke-width:1}
.unseen{fill:none;stroke:#ff7f0e;stroke-width:1;stroke-dasharray:2 2} .axis{font-size:10px;fill:#666}
.lane-title{font-size:11px;fill:#333;font-weight:600}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:8px 0}
.card h3{font-size:14px;margin:0 0 4px} table{border-collapse:collapse;font-size:12px}
td,th{padding:2px 8px;text-align:left}
.drift li{font-size:13px} .ok{color:#2ca02c} .warn{color:#b35900} .spark-row{display:flex;gap:8px;flex-wrap:wrap}
.spark-title{font-size:10px;fill:#333}
"""


@dataclass
class Lane:
    modality: str
    label: str
    series: np.ndarray
    unseen: np.ndarray | None = None  # log lane: lines of unseen templates per step


def _buckets(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n, min(n, MAX_POINTS) + 1).round().astype(np.int64))


def _reduce(x: np.ndarray, bounds: np.ndarray, how: str) -> np.ndarray:
    out = np.full(len(bounds) - 1, np.nan)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = x[a:b]
        part = part[np.isfinite(part)]
        if len(part):
            out[i] = part.max() if how == "max" else part.mean()
    return out


def _polyline(xs: np.ndarray, ys: np.ndarray, lo: float, hi: float, height: int, cls: str, top: int = 4,
              extra: str = "") -> str:
    """One polyline per finite stretch (NaN breaks the line)."""
    span = hi - lo if hi > lo else 1.0
    parts, cur = [], []
    for x, y in zip(xs, ys):
        if not np.isfinite(y):
            if len(cur) > 1:
                parts.append(cur)
            cur = []
            continue
        cur.append(f"{x:.1f},{top + (height - top - 14) * (1 - (y - lo) / span):.1f}")
    if len(cur) > 1:
        parts.append(cur)
    elif len(cur) == 1:
        parts.append(cur + [cur[0]])
    return "".join(f'<polyline class="{cls}"{extra} points="{" ".join(p)}"/>' for p in parts)


def _range(*arrays: np.ndarray) -> tuple[float, float]:
    vals = np.concatenate([a[np.isfinite(a)] for a in arrays if a is not None] or [np.zeros(1)])
    if not len(vals):
        return 0.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _ticks(ts_us: np.ndarray, height: int) -> str:
    if not len(ts_us):
        return ""
    out = []
    for f in np.linspace(0, 1, 6):
        i = min(int(round(f * (len(ts_us) - 1))), len(ts_us) - 1)
        x = PAD + f * (W - PAD - 10)
        label = str(np.datetime64(int(ts_us[i]), "us").astype("datetime64[s]")).replace("T", " ")
        anchor = "start" if f == 0 else "end" if f == 1 else "middle"
        out.append(f'<text class="axis" x="{x:.1f}" y="{height - 2}" text-anchor="{anchor}">{label}</text>')
    return "".join(out)


def _xmap(n: int):
    return lambda i: PAD + (W - PAD - 10) * (i / max(n, 1))


def _alarm_rects(alarms: list[dict], k0: int, n: int, height: int, cls: str) -> str:
    x = _xmap(n)
    out = []
    for a in alarms:
        s, e = max(a["_start_k"] - k0, 0), min(a["_end_k"] - k0, n)
        if e <= s:  # a segment that ended with the previous run (reported again, closed): a mark at the start
            s = e = 0
        width = max(x(e) - x(s), 1.0)
        title = f'{html.escape(a["start"])} – {html.escape(a["end"])}: peak {a["peak_score"]:.4g}'
        out.append(f'<rect class="{cls}" x="{x(s):.1f}" y="0" width="{width:.1f}" height="{height - 12}">'
                   f'<title>{title}</title></rect>')
    return "".join(out)


def main_chart(ts_us: np.ndarray, k0: int, score: np.ndarray, thr: np.ndarray, alarms: list[dict]) -> str:
    n = len(score)
    b = _buckets(n)
    xs = np.array([_xmap(n)(i) for i in b[:-1]])
    s, t = _reduce(score, b, "max"), _reduce(thr, b, "mean")
    lo, hi = _range(s, t)
    body = (_alarm_rects(alarms, k0, n, H_MAIN, "alarm") + _polyline(xs, s, lo, hi, H_MAIN, "score")
            + _polyline(xs, t, lo, hi, H_MAIN, "threshold") + _ticks(ts_us, H_MAIN)
            + f'<text class="axis" x="2" y="12">{hi:.3g}</text>'
            + f'<text class="axis" x="2" y="{H_MAIN - 16}">{lo:.3g}</text>'
            + f'<text class="axis" x="{W - 12}" y="12" text-anchor="end">score (blue, bucket max) · threshold (red, '
            'dashed) · alarms shaded · UTC</text>')
    return (f'<svg id="score-chart" class="chart" viewBox="0 0 {W} {H_MAIN}" width="{W}" height="{H_MAIN}" '
            f'role="img" aria-label="anomaly score and threshold over time">{body}</svg>')


def lane_chart(lane: Lane, ts_us: np.ndarray, k0: int, alarms: list[dict]) -> str:
    n = len(lane.series)
    b = _buckets(n)
    xs = np.array([_xmap(n)(i) for i in b[:-1]])
    y = _reduce(lane.series, b, "max")
    u = _reduce(lane.unseen.astype(np.float64), b, "max") if lane.unseen is not None and lane.unseen.any() else None
    lo, hi = _range(y)
    body = _alarm_rects(alarms, k0, n, H_LANE, "alarm-band") + _polyline(xs, y, lo, hi, H_LANE, "lane-line", top=14)
    if u is not None:
        ulo, uhi = _range(u)
        body += _polyline(xs, u, ulo, uhi, H_LANE, "unseen", top=14)
    title = f"{lane.modality}: {lane.label}" + (" (orange: unseen-template lines)" if u is not None else "")
    body += f'<text class="lane-title" x="{PAD}" y="11">{html.escape(title)}</text>'
    return (f'<svg class="lane" data-modality="{html.escape(lane.modality)}" viewBox="0 0 {W} {H_LANE}" '
            f'width="{W}" height="{H_LANE}" role="img" aria-label="{html.escape(title)}">{body}</svg>')


def spark(name: str, values: np.ndarray, seg: tuple[int, int], colour: str) -> str:
    n = len(values)
    xs = np.array([4 + (W_SPARK - 8) * i / max(n - 1, 1) for i in range(n)])
    lo, hi = _range(values)
    a, b = seg
    x0 = 4 + (W_SPARK - 8) * a / max(n - 1, 1)
    x1 = 4 + (W_SPARK - 8) * max(b - 1, a) / max(n - 1, 1)
    body = (f'<rect class="alarm-band" x="{x0:.1f}" y="0" width="{max(x1 - x0, 1.0):.1f}" height="{H_SPARK}"/>'
            + _polyline(xs, values, lo, hi, H_SPARK + 12, "lane-line", top=14, extra=f' style="stroke:{colour}"')
            + f'<text class="spark-title" x="4" y="10">{html.escape(name[:70])} [{lo:.3g} … {hi:.3g}]</text>')
    return (f'<svg class="spark" viewBox="0 0 {W_SPARK} {H_SPARK}" width="{W_SPARK}" height="{H_SPARK}" role="img" '
            f'aria-label="{html.escape(name)}">{body}</svg>')


def alarm_card(i: int, a: dict, sparks: list[tuple[str, np.ndarray, tuple[int, int]]]) -> str:
    rows = [("peak score", f'{a["peak_score"]:.4g} at {a["peak_at"]} (threshold {a["threshold_at_peak"]:.4g})'),
            ("modality that fired", a["modality"]), ("modality scores", a["modality_scores"] or "–"),
            ("fusion weights", a["fusion_weights"] or "–"),
            ("top contributors" + (f' ({a["_contrib_kind"]})' if a.get("_contrib_kind") else ""),
             a["top_contributors"] or "–"),
            ("top features (mean |deviation|)", a["top_features"] or "–")]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    state = " (still open at the end of this run)" if a["open"] else ""
    graphs = "".join(spark(n, v, seg, COLOURS[j % len(COLOURS)]) for j, (n, v, seg) in enumerate(sparks))
    return (f'<div class="card alarm-card" id="alarm-{i}"><h3>Alarm {i + 1}: {html.escape(a["start"])} – '
            f'{html.escape(a["end"])} ({a["duration_s"]:.0f} s){state}</h3><table>{table}</table>'
            f'<div class="spark-row">{graphs}</div></div>')


def render(summary: dict, ts_us: np.ndarray, k0: int, score: np.ndarray, thr: np.ndarray, lanes: list[Lane],
           alarms: list[dict], sparks: list[list[tuple[str, np.ndarray, tuple[int, int]]]], notes: list[str]) -> str:
    """The whole page as one string."""
    meta = (f'model <b>{html.escape(summary["dataset"])}/{html.escape(summary["detector"])}</b> · dump '
            f'<code>{html.escape(summary["dump"])}</code> ({html.escape(summary["format"])}) · '
            f'{html.escape(summary["span"]["first"] or "–")} – {html.escape(summary["span"]["end"] or "–")} · '
            f'{summary["steps_scored"]} steps of {summary["step_s"]:g} s · threshold '
            f'{html.escape(summary["threshold"]["method"])} · {len(alarms)} alarm segment(s)')
    drift = ("".join(f'<li class="warn">{html.escape(n)}</li>' for n in notes)
             or '<li class="ok">nothing the model has not seen</li>')
    cards = "".join(alarm_card(i, a, sparks[i] if i < len(sparks) else []) for i, a in enumerate(alarms)) \
        or "<p>No alarm in this run.</p>"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Alarms: {html.escape(summary['dataset'])}/{html.escape(summary['detector'])}</title>"
            f"<style>{CSS}</style></head><body>"
            f"<h1>Anomaly score report</h1><p class=\"meta\">{meta}</p>"
            "<h2>Score and threshold</h2>" + main_chart(ts_us, k0, score, thr, alarms)
            + "<h2>Modalities</h2>" + "".join(lane_chart(ln, ts_us, k0, alarms) for ln in lanes)
            + f"<h2>Alarms</h2>{cards}<h2>Drift</h2><ul class=\"drift\" id=\"drift\">{drift}</ul>"
            "</body></html>\n")
