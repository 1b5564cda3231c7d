"""``write_report``: a study's results table -> a Markdown report and a self-contained HTML page.

Both hold the full table (metrics, parameters, MACs, FPS at each input size, speed-up over the
baseline, training time), the by-factor tables of the reference study (mean +- std per factor level,
and per backbone x factor), FPS by factor with std bars at each timed input size, accuracy against
FPS with the Pareto front, a qualitative grid (the same test frames through the selected variants,
with the ground truth), the attention-scaling figure when the study has one, and a generated
summary (the best variant per speed budget; the factor that costs least accuracy per doubling of
speed). Figures are matplotlib PNGs: files beside the Markdown, embedded in the HTML.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import DataError, FastDPTError
from ..io import atomic_write
from .results import by_factor, factors, finite, load_results, pareto_front, round_ratios

FACTORS = ("backbone", "hooks", "heads", "attention", "size", "features", "compress")
ACCURACY = ("d1", "abs_rel", "rmse_log", "silog")


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _sizes(rows: list[dict]) -> list[str]:
    return sorted({k[4:] for r in rows for k in r if k.startswith("fps_") and finite(r.get(k))},
                  key=lambda s: [int(v) for v in s.split("x")])


def _varying(rows: list[dict]) -> list[str]:
    ok = [r for r in rows if r.get("status") == "ok"]
    return [f for f in FACTORS if len({factors(r)[f] for r in ok}) > 1]


def wall_s(row: dict) -> float | None:
    """A trial's wall time from start to its row (training, scoring, timing; the last attempt)."""
    if finite(row.get("started")) and finite(row.get("finished")):
        return float(row["finished"]) - float(row["started"])
    return None


def full_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    sizes = _sizes(rows)
    head = ["variant", "status", "d1", "AbsRel", "RMSE", "RMSE log", "SILog", "params M", "GMACs",
            *[f"FPS {s}" for s in sizes], "speed-up", "train s", "wall s"]
    compressed = any(r.get("compress") for r in rows)
    if compressed:
        head += ["file MB", "runtime"]
    if any(finite(r.get("flicker")) for r in rows):
        head += ["flicker", "TAE"]
    body = []
    for r in rows:
        cells = [r["name"], r.get("status", ""), _fmt(r.get("d1")), _fmt(r.get("abs_rel")), _fmt(r.get("rmse")),
                 _fmt(r.get("rmse_log")), _fmt(r.get("silog"), 2), _fmt((r.get("params") or 0) / 1e6, 1),
                 _fmt((r.get("macs") or 0) / 1e9, 1), *[_fmt(r.get(f"fps_{s}"), 2) for s in sizes],
                 _speedup_cell(r), _fmt(r.get("train_s"), 0),
                 _fmt(wall_s(r), 0)]
        if compressed:
            cells += [_fmt(r.get("file_mb"), 1), r.get("runtime") or (f"torch on {r['device']}" if r.get("device") else "")]
        if "flicker" in head:
            cells += [_fmt(r.get("flicker"), 4), _fmt(r.get("tae"), 4)]
        body.append(cells)
    return head, body


def _speedup_cell(r: dict) -> str:
    """``1.79x (1.52-2.10)``: the speed-up and its range over interleaved timing rounds; ``~`` marks
    one whose range holds 1.0 (not a measured difference)."""
    if not finite(r.get("speedup")):
        return _fmt(r.get("speedup"), 2)
    text = f"{r['speedup']:.2f}x"
    if finite(r.get("speedup_min")):
        text += f" ({r['speedup_min']:.2f}-{r['speedup_max']:.2f}){' ~' if r.get('speedup_in_noise') else ''}"
    return text


def _level_rounds(rows: list[dict], factor: str, level: str) -> list[float] | None:
    """Mean FPS of a factor level in each interleaved timing round (None without rounds)."""
    rs = [r for r in rows if r.get("status") == "ok" and factors(r)[factor] == level and r.get("rounds_latency_ms")]
    if not rs or len({len(r["rounds_latency_ms"]) for r in rs}) != 1:
        return None
    return [float(np.mean([1000.0 / r["rounds_latency_ms"][k] for r in rs])) for k in range(len(rs[0]["rounds_latency_ms"]))]


def factor_tables(rows: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = []
    varying = _varying(rows)
    for f in varying:
        entries = by_factor(rows, f, keys=ACCURACY)
        tables.append((f"by {f}", [f, "n", *ACCURACY],
                       [[e["level"], str(e["n"]), *[f"{e[k][0]:.3f} ± {e[k][1]:.3f}" for k in ACCURACY]] for e in entries]))
    if "backbone" in varying:
        for f in [x for x in varying if x != "backbone"]:
            entries = by_factor(rows, f, keys=ACCURACY, split="backbone")
            tables.append((f"by backbone x {f}", ["backbone", f, "n", *ACCURACY],
                           [[e["backbone"], e["level"], str(e["n"]), *[f"{e[k][0]:.3f} ± {e[k][1]:.3f}" for k in ACCURACY]]
                            for e in entries]))
    return tables


def summary(rows: list[dict]) -> list[str]:
    ok = [r for r in rows if r.get("status") == "ok" and finite(r.get("abs_rel")) and finite(r.get("fps"))]
    if not ok:
        return ["No trial has finished yet."]
    lines = []
    base = next((r for r in rows if r.get("baseline") and finite(r.get("fps"))), None)
    ref = base["fps"] if base else min(r["fps"] for r in ok)
    label = "the baseline" if base else "the slowest variant"
    for mult in (1, 2, 4, 8, 16):
        budget = ref * mult
        fit = [r for r in ok if r["fps"] >= budget]
        if not fit:
            break
        best = min(fit, key=lambda r: r["abs_rel"])
        lines.append(f"At >= {mult}x {label}'s speed ({budget:.2f} FPS): best is `{best['name']}` "
                     f"(AbsRel {best['abs_rel']:.3f}, {best['fps']:.2f} FPS).")
    costs = []
    for f in _varying(rows):
        entries = [e for e in by_factor(rows, f, keys=("abs_rel", "fps")) if math.isfinite(e["fps"][0]) and e["fps"][0] > 0]
        if len(entries) < 2:
            continue
        entries.sort(key=lambda e: e["fps"][0])
        slow, fast = entries[0], entries[-1]
        doublings = math.log2(fast["fps"][0] / slow["fps"][0])
        if doublings > 0.05:
            delta = fast["abs_rel"][0] - slow["abs_rel"][0]
            lo, hi = round_ratios(_level_rounds(rows, f, fast["level"]), _level_rounds(rows, f, slow["level"]))
            noise = "" if lo is None else (f" (timing rounds {lo:.2f}-{hi:.2f}x" +
                                          (": within the timing noise, not a measured speed-up)" if lo <= 1 <= hi else ")"))
            costs.append((delta / doublings, f, slow["level"], fast["level"], doublings, delta, noise))
    if costs:
        cost, f, slow, fast, d, delta, noise = min(costs)
        verb = "costs" if cost > 0 else "gains"
        lines.append(f"The factor that costs least accuracy per unit of speed is **{f}**: going from {slow} to {fast} "
                     f"is {2 ** d:.2f}x faster on average{noise} and changes the mean AbsRel by {delta:+.4f} "
                     f"({verb} {abs(cost):.4f} AbsRel per doubling of speed).")
        for cost, f2, slow, fast, d, delta, noise in sorted(costs)[1:]:
            lines.append(f"{f2}: {slow} -> {fast}, {2 ** d:.2f}x faster{noise}, mean AbsRel {delta:+.4f} "
                         f"({cost:+.4f} per doubling).")
    front = pareto_front(ok)
    lines.append("Pareto front (AbsRel against FPS): " + ", ".join(f"`{r['name']}`" for r in front) + ".")
    return lines


# -- figures --------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


MARKERS = "o^sDvP*X"  # one a registered attention kernel, in registration order


def _marker(kernel: str) -> str:
    from ..config import ATTENTIONS

    names = list(ATTENTIONS)
    return MARKERS[names.index(kernel) % len(MARKERS)] if kernel in names else "x"


def fig_accuracy_vs_fps(rows: list[dict], path: Path) -> Path:
    plt = _plt()
    ok = [r for r in rows if r.get("status") in ("ok", "baseline") and finite(r.get("abs_rel")) and finite(r.get("fps"))]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = {}
    for r in ok:
        f = factors(r)
        c = colours.setdefault(f["backbone"], f"C{len(colours)}")
        hollow = f["compress"] != "none"  # a compressed model: the outline in its backbone's colour
        ax.scatter(r["fps"], r["abs_rel"], marker=_marker(f["attention"]),
                   s=60 if r.get("baseline") else 36, facecolors="none" if hollow else c,
                   edgecolors=c if hollow else ("k" if r.get("baseline") else "none"), label=None)
        if finite(r.get("file_mb")):  # the model's size beside each point
            ax.annotate(f"{r['file_mb']:.1f} MB", (r["fps"], r["abs_rel"]), fontsize=5, xytext=(3, -7),
                        textcoords="offset points", color="0.35")
    front = pareto_front([r for r in ok if r.get("status") == "ok"])
    if front:
        ax.plot([r["fps"] for r in front], [r["abs_rel"] for r in front], "k--", lw=1, label="Pareto front")
        for r in front:
            ax.annotate(r["name"].split("@")[0], (r["fps"], r["abs_rel"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    for b, c in colours.items():
        ax.scatter([], [], color=c, label=b)
    for kernel in dict.fromkeys(factors(r)["attention"] for r in ok):  # the kernels the rows have, in order
        ax.scatter([], [], color="grey", marker=_marker(kernel), label=kernel)
    if any(factors(r)["compress"] != "none" for r in ok):
        ax.scatter([], [], facecolors="none", edgecolors="grey", marker="o", label="compressed")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.7, not 7x10^-1
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.xaxis.set_minor_formatter(plain)
    ax.margins(x=0.25, y=0.12)  # room for the labels of the outermost points
    ax.set_xlabel("FPS (whole online step, batch 1, own input size)")
    ax.set_ylabel("AbsRel (lower is better)")
    ax.set_title("Accuracy against speed")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig_fps_by_factor(rows: list[dict], path: Path) -> Path | None:
    plt = _plt()
    sizes = _sizes(rows)
    varying = _varying(rows)
    if not varying or not sizes:
        return None
    fig, axes = plt.subplots(1, len(varying), figsize=(3.6 * len(varying), 3.6), squeeze=False)
    for ax, f in zip(axes[0], varying):
        keys = tuple(f"fps_{s}" for s in sizes)
        entries = by_factor(rows, f, keys=keys)
        x = np.arange(len(entries))
        w = 0.8 / len(sizes)
        for j, (s, k) in enumerate(zip(sizes, keys)):
            means = [e[k][0] for e in entries]
            stds = [e[k][1] for e in entries]
            ax.bar(x + j * w - 0.4 + w / 2, means, w, yerr=stds, capsize=3, label=s)
        ax.set_xticks(x, [e["level"] for e in entries], fontsize=8)
        ax.set_title(f"FPS by {f}")
        ax.set_ylabel("FPS (mean ± std)")
        ax.legend(fontsize=7, title="input", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig_attention(att: list[dict], path: Path) -> Path:
    plt = _plt()
    heads = sorted({r["heads"] for r in att})
    fig, axes = plt.subplots(1, len(heads), figsize=(4 * len(heads), 3.6), squeeze=False)
    for ax, h in zip(axes[0], heads):
        for kernel in sorted({r["kernel"] for r in att}):
            pts = sorted((r["tokens"], r["ms"]) for r in att if r["heads"] == h and r["kernel"] == kernel and r["ms"])
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=kernel)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel("ms (one block, batch 1)")
        ax.set_title(f"{h} head{'s' if h > 1 else ''}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig_qualitative(rows: list[dict], settings, path: Path, frames: int = 3, variants: int = 5) -> Path | None:
    """The same test frames through the selected variants (the Pareto front, then the most accurate),
    beside the input and the (sparse, dilated) ground truth, all on one colour scale per frame."""
    import cv2

    from ..api import load
    from ..data.kitti import apply_kb_crop, find_gt, fits_kb_crop, read_split
    from ..io import read_depth_png, read_image
    from ..predict import Predictor
    from ..viz import colorize

    ok = [r for r in rows if r.get("status") == "ok" and r.get("checkpoint") and Path(r["checkpoint"]).is_file()]
    if not ok:
        return None
    chosen = pareto_front(ok)
    for r in sorted(ok, key=lambda r: r.get("abs_rel", math.inf)):
        if len(chosen) >= variants:
            break
        if r not in chosen:
            chosen.append(r)
    chosen = chosen[:variants]
    paths = settings.paths()
    entries = [e for e in read_split(paths.splits["test_split"]) if find_gt(paths.gt_root, e.gt)]
    picks = [entries[i] for i in np.linspace(0, len(entries) - 1, min(frames, len(entries))).astype(int)]
    preds = {r["name"]: Predictor(r["checkpoint"], backend="openvino") if str(r["checkpoint"]).endswith(".xml")
             else Predictor(load(r["checkpoint"]))
             for r in chosen}
    plt = _plt()
    cols = 2 + len(chosen)
    fig, axes = plt.subplots(len(picks), cols, figsize=(2.6 * cols, 1.2 * len(picks) + 0.6), squeeze=False)
    for i, e in enumerate(picks):
        img = read_image(paths.raw_root / e.rgb)
        gt = read_depth_png(find_gt(paths.gt_root, e.gt))
        if fits_kb_crop(*img.shape[:2]):
            img, gt = apply_kb_crop(img), apply_kb_crop(gt)
        dil = cv2.dilate(gt, np.ones((5, 5), np.uint8))
        valid = gt[gt > 0]
        limits = (float(valid.min()), float(valid.max())) if valid.size else None  # one scale: the GT's range
        panels = [("input", img), ("ground truth", np.where(dil[..., None] > 0,
                                                            colorize(np.where(dil > 0, dil, np.nan), "metric", limits=limits), 0))]
        for r in chosen:
            panels.append((r["name"].split("@")[0], colorize(preds[r["name"]].predict(img).depth, "metric", limits=limits)))
        for j, (title, im) in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(im)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- writing --------------------------------------------------------------------------------------------
def _md_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def _markdown():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False})


def inline_html(text: str) -> str:
    """One line of the report's Markdown (``**bold**``, backticks) as HTML; raw HTML in it is escaped.
    One parser serves every cell."""
    return _markdown().renderInline(str(text))


def _html_table(head: list[str], body: list[list[str]]) -> str:
    h = "".join(f"<th>{inline_html(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def write_report(study: str | os.PathLike, out_dir: str | os.PathLike, title: str | None = None,
                 note: str | None = None, qualitative: bool = True) -> dict:
    """Write ``report.md`` (with ``figures/*.png``) and a self-contained ``report.html`` into ``out_dir``
    from ``study/results.json``; returns the paths written."""
    from .trial import StudySettings

    study = Path(study)
    rows = load_results(study)
    if not rows:
        raise DataError(f"{study}/results.json has no rows yet")
    settings = StudySettings.load(study)
    out = Path(out_dir)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    try:
        synthetic = settings.paths().dense_root is not None
    except FastDPTError:  # the data is not on this machine: no claim about it
        synthetic = False
    if note is None and synthetic:
        note = ("These scores come from synthetic KITTI-format scenes (`fastdpt data synth`), not from KITTI: they "
                "compare the variants with each other under this budget and say nothing about KITTI accuracy.")
    figures = [("Accuracy against speed", fig_accuracy_vs_fps(rows, figs / "accuracy_vs_fps.png"))]
    f = fig_fps_by_factor(rows, figs / "fps_by_factor.png")
    if f:
        figures.append(("FPS by factor (mean ± std over the other factors) at each timed input size", f))
    att_path = study / "attention.json"
    if att_path.is_file():
        att = json.loads(att_path.read_text())
        att_rows = att["rows"] if isinstance(att, dict) else att
        figures.append(("Attention scaling: one block, batch 1, dim 768", fig_attention(att_rows, figs / "attention.png")))
    if qualitative:
        q = fig_qualitative(rows, settings, figs / "qualitative.png")
        if q:
            figures.append(("The same test frames through the selected variants (colour: near is warm)", q))
    head, body = full_table(rows)
    tables = factor_tables(rows)
    lines = summary(rows)
    title = title or f"Study {study.name}"
    trials = [r for r in rows if not r.get("baseline")]
    in_grid = any(r.get("baseline") and not str(r.get("name", "")).endswith("~baseline") for r in rows)
    reference = (f"the baseline `{settings.baseline}` is a grid member: trained and scored like the others, its row "
                 "is also the speed reference" if in_grid else f"plus the baseline `{settings.baseline}`")
    meta = (f"{len(trials)} trials ({sum(r.get('status') == 'ok' for r in trials)} finished, "
            f"{sum(r.get('status') == 'failed' for r in trials)} failed); {reference}; "
            f"grid `{settings.grid}`; training options {json.dumps(settings.train)}; timed on "
            f"{rows[0].get('device', '?')} with {rows[0].get('bench_threads', '?')} threads, frames "
            f"{settings.bench_frame[0]}x{settings.bench_frame[1]}.")
    md = [f"# {title}", "", meta, ""]
    if note:
        md += [f"> {note}", ""]
    md += ["## Summary", ""] + [f"- {line}" for line in lines] + ["", "## All variants", "", _md_table(head, body), ""]
    for name, h, b in tables:
        md += [f"## Accuracy {name} (mean ± std)", "", _md_table(h, b), ""]
    for caption, p in figures:
        md += [f"## {caption}", "", f"![{caption}](figures/{p.name})", ""]
    md_text = "\n".join(md)
    atomic_write(out / "report.md", lambda p: p.write_text(md_text))
    css = ("body{font-family:system-ui,sans-serif;margin:2rem;max-width:1400px;color:#222}"
           "table{border-collapse:collapse;font-size:12px;margin:1rem 0}td,th{border:1px solid #ccc;padding:3px 6px;"
           "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
           ".note{background:#fff4d6;padding:.6rem;border-left:4px solid #e0a800}")
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1><p>{inline_html(meta)}</p>"]
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    parts.append("<h2>Summary</h2><ul>" + "".join(f"<li>{inline_html(line)}</li>" for line in lines) + "</ul>")
    parts.append("<h2>All variants</h2>" + _html_table(head, body))
    for name, h, b in tables:
        parts.append(f"<h2>Accuracy {html.escape(name)} (mean ± std)</h2>" + _html_table(h, b))
    for caption, p in figures:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    page = "".join(parts)
    atomic_write(out / "report.html", lambda p: p.write_text(page))
    return {"markdown": out / "report.md", "html": out / "report.html", "figures": [p for _, p in figures]}
