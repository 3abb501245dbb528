"""Figure 10's report: the found-vs-stray and found-vs-false-frames plots and the markdown table of the
quality rows that ``bench/bench_quality.py`` measures (``--report`` redraws them from its JSON)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _q():
    from bench import bench_quality  # its set names and operating points (imported late: it imports this)

    return bench_quality


def found_at_stray(sweep: list[dict], budget: float) -> float | None:
    """Obstacles found at ``budget`` stray regions per frame, read off the swept curve (linear between
    the two swept points around the budget; the curve's own set, so a reading, not a chosen point)."""
    pts = sorted((p["stray_per_frame"], p["found"]) for p in sweep if p["found"] is not None)
    if not pts:
        return None
    xs = np.array([x for x, _ in pts])
    ys = np.maximum.accumulate(np.array([y for _, y in pts]))
    if budget < xs[0]:
        return 0.0 if xs[0] > 0 else float(ys[0])
    return float(np.interp(budget, xs, ys))


def plot(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    from pebal_training.figures import save_figure

    q = _q()
    written = []
    series = [(name, r["planner"]) for name, r in results.items() if r.get("planner")]
    for key, (_, _, title) in q.OBSTACLE_SETS.items():
        fig = Figure(figsize=(6.5, 4.5))
        ax = fig.add_subplot(1, 1, 1)
        for name, p in series:
            # in threshold order (a parametric curve): at very low thresholds regions merge and get rejected,
            # so neither axis is monotone in the threshold
            pts = [(q["stray_per_frame"], q["found"]) for q in sorted(p["sweep"].get(key, []),
                                                                      key=lambda q: -q["threshold"])
                   if q["found"] is not None]
            if pts:
                ax.plot(*zip(*pts), marker=".", lw=1.2, label=name, alpha=0.85)
        ax.axvline(q.STRAY_BUDGET, color="grey", ls=":", lw=0.8)
        ax.set(xlabel="stray regions per frame", ylabel="obstacles found (>= 25 % covered)", ylim=(0, 1.02),
               xlim=(0, 1.0), title=f"found vs stray - {title} (node network size, single frames)")
        ax.grid(True, lw=0.4, alpha=0.5)
        ax.legend(fontsize="small", loc="upper right")
        fig.tight_layout()
        path = out_dir / f"quality_found_vs_stray_{key}.png"
        save_figure(path, fig)
        written.append(path)
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, p) in enumerate(series):
        laf = {q["threshold"]: q["found"] for q in p["sweep"].get("fs_laf", [])}
        clip = {q["threshold"]: q["frames_with_any"] for q in p["sweep"].get("highway_clip", [])}
        pts = [(clip[t], laf[t]) for t in sorted(laf, reverse=True) if t in clip and laf[t] is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", lw=1.2, color=f"C{i}", label=name)
        op = p["operating_points"].get(q.NORMAL_POINT, {}).get("sets", {})
        if "fs_laf" in op and "highway_clip" in op:
            ax.plot([op["highway_clip"]["frames_with_any"]], [op["fs_laf"]["found"]], "*", ms=12, color=f"C{i}")
    ax.set(xlabel="highway clip frames with any obstacle", ylabel="FS L&F obstacles found", xlim=(0, 1.02),
           ylim=(0, 1.02), title="found vs false frames (star: threshold by the normal rule on 8 highway frames)")
    ax.grid(True, lw=0.4, alpha=0.5)
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    path = out_dir / "quality_found_vs_false_frames.png"
    save_figure(path, fig)
    written.append(path)
    return written


# --------------------------------------------------------------------------------------------- report
def table(results: dict) -> str:
    q = _q()
    lines = ["| row | set | AUROC 1024 | AP 1024 | FPR95 1024 | AUROC native | AP native | FPR95 native | "
             "sIoU / PPV / F1 (thr. from) | found at 0.3 stray | at the shipped threshold (else the normal rule "
             "on the highway frames): found / stray / clip frames with any |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(x, d=3):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"

    for name, r in results.items():
        for key in q.OBSTACLE_SETS:
            a, b = r.get("pixel_1024", {}).get(key, {}), r.get("pixel_native", {}).get(key, {})
            c = r.get("components", {}).get(key)
            comp = f"{f(c['siou'])} / {f(c['ppv'])} / {f(c['mean_f1'])} ({c['threshold_chosen_on']})" if c else "-"
            p = r.get("planner") or {}
            fa = found_at_stray(p.get("sweep", {}).get(key, []), q.STRAY_BUDGET) if p else None
            ops = (p.get("operating_points") or {}) if p else {}
            op = ops.get("shipped") or ops.get(q.NORMAL_POINT, {})
            s, clip = op.get("sets", {}).get(key), op.get("sets", {}).get("highway_clip")
            normal = (f"{f(s['found'], 2)} / {f(s['stray_per_frame'], 2)} / {f(clip['frames_with_any'], 2)}"
                      if s and clip else "-")
            lines.append(f"| {name} | {key} | {f(a.get('auroc'))} | {f(a.get('ap'))} | {f(a.get('fpr95'))} | "
                         f"{f(b.get('auroc'))} | {f(b.get('ap'))} | {f(b.get('fpr95'))} | {comp} | {f(fa, 2)} | "
                         f"{normal} |")
    for key, (auroc, ap, fpr) in q.PEBAL_PUBLISHED.items():
        lines.append(f"| PEBAL WRN38 (published) | {key} | - | - | - | {auroc:.3f} | {ap:.3f} | {fpr:.3f} "
                     "| - | - | - |")
    return "\n".join(lines)


