"""The results table of a study: one row per trial under ``STUDY/rows/`` (written by the trial itself
as soon as it ends), assembled into ``STUDY/results.json`` and ``results.csv``; and what the report
derives from it (factors, Pareto front, by-factor statistics)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from ..evaluation.metrics import METRIC_KEYS
from ..io import atomic_write
from ..presets import get_config

ROW_KEYS = ("name", "status", *METRIC_KEYS, "fps", "latency_ms_median", "params", "macs", "speedup", "train_s",
            "error")
STATUSES = ("ok", "running", "failed", "baseline")


def row_path(study: str | os.PathLike, trial_id: str) -> Path:
    safe = trial_id.replace("/", "_")
    return Path(study) / "rows" / f"{safe}.json"


def write_row(study: str | os.PathLike, row: dict) -> Path:
    path = row_path(study, row["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(row, indent=1, default=str)
    return atomic_write(path, lambda p: p.write_text(text))


def read_row(study: str | os.PathLike, trial_id: str) -> dict | None:
    path = row_path(study, trial_id)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_rows(study: str | os.PathLike) -> list[dict]:
    rows = []
    for p in sorted((Path(study) / "rows").glob("*.json")):
        try:
            rows.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            continue
    return rows


def with_speedups(rows: list[dict]) -> list[dict]:
    """``speedup`` = the baseline's latency / the row's, per bench size (``speedup_<HxW>`` too); with
    interleaved rounds (``rounds_latency_ms``), ``speedup_min`` / ``speedup_max`` over the rounds'
    ratios and ``speedup_in_noise`` when that range holds 1.0 (the difference is not measured)."""
    base = next((r for r in rows if r.get("baseline") and r.get("latency_ms_median")), None)
    for r in rows:
        if base and r.get("latency_ms_median"):
            r["speedup"] = round(base["latency_ms_median"] / r["latency_ms_median"], 3)
            lo, hi = round_ratios(base.get("rounds_latency_ms"), r.get("rounds_latency_ms"))
            if lo is not None and r is not base:
                r.update(speedup_min=round(lo, 3), speedup_max=round(hi, 3), speedup_in_noise=bool(lo <= 1 <= hi))
            for key, value in list(r.items()):
                if key.startswith("latency_ms_") and key != "latency_ms_median" and base.get(key) and value:
                    r["speedup_" + key.removeprefix("latency_ms_")] = round(base[key] / value, 3)
    return rows


def round_ratios(slow: list | None, fast: list | None) -> tuple[float | None, float | None]:
    """Min and max over interleaved rounds of slow / fast latency (None without matching rounds)."""
    if not slow or not fast or len(slow) != len(fast):
        return None, None
    ratios = [a / b for a, b in zip(slow, fast) if a and b]
    return (min(ratios), max(ratios)) if ratios else (None, None)


def assemble(study: str | os.PathLike) -> list[dict]:
    """Rows -> ``results.json`` (a list of rows) and ``results.csv``; returns the rows."""
    study = Path(study)
    rows = with_speedups(read_rows(study))
    rows.sort(key=lambda r: (not r.get("baseline"), r["name"]))
    text = json.dumps(rows, indent=1, default=str)
    atomic_write(study / "results.json", lambda p: p.write_text(text))
    keys = list(ROW_KEYS) + sorted({k for r in rows for k in r} - set(ROW_KEYS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in keys})
    atomic_write(study / "results.csv", lambda p: p.write_text(buf.getvalue()))
    return rows


def load_results(study: str | os.PathLike) -> list[dict]:
    path = Path(study) / "results.json"
    if not path.is_file():
        from ..errors import DataError

        raise DataError(f"no results table at {path}: run `fastdpt study run ... --out {study}` first")
    return json.loads(path.read_text())


# -- what the report derives ----------------------------------------------------------------------------
def factors(row: dict) -> dict:
    """The study's factors of a row, from its canonical name (and its compression level)."""
    cfg = get_config(row.get("model") or row["name"].split("~")[0])
    return {"backbone": cfg.backbone, "hooks": f"({cfg.hooks[0]},{cfg.hooks[1]})", "heads": str(cfg.heads),
            "attention": cfg.attention, "size": f"{cfg.input_size[0]}x{cfg.input_size[1]}",
            "features": str(cfg.features), "compress": row.get("compress") or "none"}


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def pareto_front(rows: list[dict], acc: str = "abs_rel", speed: str = "fps") -> list[dict]:
    """Rows no other row beats on both accuracy (lower ``acc``; higher for d1-d3) and speed."""
    lower = not acc.startswith("d")
    pts = [r for r in rows if finite(r.get(acc)) and finite(r.get(speed))]
    front = []
    for r in pts:
        def better(o):
            a_ok = o[acc] <= r[acc] if lower else o[acc] >= r[acc]
            a_st = o[acc] < r[acc] if lower else o[acc] > r[acc]
            return a_ok and o[speed] >= r[speed] and (a_st or o[speed] > r[speed])
        if not any(better(o) for o in pts if o is not r):
            front.append(r)
    return sorted(front, key=lambda r: r[speed])


def by_factor(rows: list[dict], factor: str, keys=("d1", "abs_rel", "rmse_log", "silog", "fps"),
              split: str | None = None) -> list[dict]:
    """Mean and std of ``keys`` per level of ``factor`` (and per level of ``split``, e.g. backbone)."""
    groups: dict = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        f = factors(r)
        groups.setdefault((f[split] if split else "", f[factor]), []).append(r)
    out = []
    for (s, level), rs in sorted(groups.items()):
        entry = {"factor": factor, "level": level, "n": len(rs), **({split: s} if split else {})}
        for k in keys:
            vals = np.array([r[k] for r in rs if finite(r.get(k))], dtype=float)
            entry[k] = (float(vals.mean()), float(vals.std())) if len(vals) else (float("nan"), float("nan"))
        out.append(entry)
    return out
