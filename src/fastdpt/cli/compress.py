"""``fastdpt compress``: options derived from CompressConfig; the checkpoint is the argument."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..compress.config import CompressConfig
from .common import console, dataclass_command, one_line_errors, out


def _mb(n: int | None) -> str:
    return f"{n / 2**20:.1f} MB" if n is not None else "-"


def _compress(values: dict) -> None:
    from ..compress.run import compress

    values["frames"] = tuple(str(p) for p in values.pop("frames") or ())
    cfg = CompressConfig(**values)
    log = (lambda m: console.print(m, highlight=False)) if cfg.progress else (lambda m: None)
    r = compress(cfg, log=log)
    b, a, s = r["before"], r["after"], r.get("speed", {})
    line = (f"{r['path']}: {b['params'] / 1e6:.2f} -> {a['params'] / 1e6:.2f} M parameters, "
            f"{b['macs'] / 1e9:.2f} -> {a['macs'] / 1e9:.2f} GMACs, file {_mb(b['file_bytes'])} -> {_mb(a['file_bytes'])}")
    if "palettised_bytes" in a:
        line += f" ({_mb(a['palettised_bytes'])} palettised)"
    if s:
        line += (f"; whole step {s['before']['median_ms']:.1f} -> {s['after']['median_ms']:.1f} ms "
                 f"({r['speedup']:.2f}x, {s['runtime']}, {s['threads']} threads)")
    if r.get("agreement"):
        line += f"; AbsRel vs the uncompressed model {r['agreement']['abs_rel_vs_original']:.4f}"
    if r.get("qat"):
        q, sq = r["qat"], s.get("after int8 qat", {})
        line += (f"; int8 {q['path']}: AbsRel vs the uncompressed model {q['agreement qat']['abs_rel_vs_original']:.4f} "
                 "quantisation-aware")
        if "agreement ptq" in q:
            sp = s.get("after int8 ptq", {})
            line += (f" ({sq.get('median_ms', float('nan')):.1f} ms), {q['agreement ptq']['abs_rel_vs_original']:.4f} "
                     f"post-training ({sp.get('median_ms', float('nan')):.1f} ms)")
    out.print(line + f"; report {Path(cfg.out) / 'report.json'}", highlight=False)


def _param(name: str, annotation) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


compress = one_line_errors(dataclass_command(
    CompressConfig, _compress, exclude=("checkpoint", "frames"),
    extra=[inspect.Parameter("checkpoint", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[str, typer.Argument(
               metavar="CHECKPOINT", help="a fastdpt checkpoint (.safetensors) or a preset with weights")]),
           _param("frames", Annotated[Optional[List[Path]], typer.Option(
               "--frames", help="video file, image folder or KITTI raw root (repeatable): distillation, taylor "
                                "importance, the agreement check")])]))
compress.__doc__ = ("Compress a model: structured pruning (heads, MLP, decoder channels) with recovery by distillation "
                    "or training, and weight clustering; writes OUT/model.safetensors and a before/after report.")
