"""Training and scoring commands: train (options derived from TrainConfig), eval, eval-pngs."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import ConfigError
from ..training.config import TrainConfig
from .common import (DeviceOpt, ThreadsOpt, console, dataclass_command, given_options, interrupted, one_line_errors,
                     out, set_threads)


def _train(values: dict) -> None:
    from ..training import train
    from ..training.run import resume_config

    ctx = values.pop("ctx")
    resume, overwrite = values.pop("resume"), values.pop("overwrite")
    if resume:  # options not given on the command line are the run's own
        cfg = resume_config(values["out"], **given_options(ctx, values))
    else:
        cfg = TrainConfig(**values)
    try:
        res = train(cfg, resume=resume, overwrite=overwrite)
    except KeyboardInterrupt:
        state = Path(cfg.out) / "resume.ckpt"
        interrupted(f"the run in {cfg.out} is kept; continue it with `fastdpt train --out {cfg.out} --resume`"
                    if state.is_file() else f"{cfg.out} had no resume state yet (one is saved at each epoch end "
                    "and every --checkpoint-every steps); start again with --overwrite")
    out.print(json.dumps(res, indent=1))


def _flag(name: str, help: str) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False,
                             annotation=Annotated[bool, typer.Option(f"--{name}", help=help)])


train = one_line_errors(dataclass_command(
    TrainConfig, _train, extra=[inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
                                _flag("resume", "continue the run in --out (its options, unless given again)"),
                                _flag("overwrite", "start over in an --out that holds a run (its files are removed)")]))
train.__doc__ = "Train a variant (the study's recipe by default: AdamW 1e-5, 20 epochs, batch 1, clip 0.5, SILog)."


def _crop(garg: bool, eigen: bool, none: bool) -> Optional[str]:
    if garg + eigen + none > 1:
        raise typer.BadParameter("choose one of --garg-crop, --eigen-crop and --no-crop")
    return None if none else "eigen" if eigen else "garg"


GargOpt = Annotated[bool, typer.Option("--garg-crop", help="Garg crop on the GT (the default)")]
EigenOpt = Annotated[bool, typer.Option("--eigen-crop", help="Eigen crop on the GT instead of Garg's")]
NoCropOpt = Annotated[bool, typer.Option("--no-crop", help="score every valid GT pixel")]
KbOpt = Annotated[bool, typer.Option("--kb-crop", help="predict on the 352x1216 KB crop and paste it back")]
AlignOpt = Annotated[bool, typer.Option("--align", help="relative models: fit scale and shift in inverse depth per image")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="write the metrics as JSON")]


@one_line_errors
def evaluate(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="variant (omit for a fastdpt checkpoint)"),
    weights: Path = typer.Option(..., "--weights", "-w"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    raw_root: Optional[Path] = typer.Option(None, "--raw-root"),
    gt_root: Optional[Path] = typer.Option(None, "--gt-root"),
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="default: <data-root>/splits/test_files_with_gt.txt"),
    garg_crop: GargOpt = False,
    eigen_crop: EigenOpt = False,
    no_crop: NoCropOpt = False,
    kb_crop: KbOpt = False,
    align: AlignOpt = False,
    json_out: JsonOpt = None,
    save_png: Optional[Path] = typer.Option(None, "--save-png", help="write uint16 predictions here"),
    temporal: bool = typer.Option(False, "--temporal", help="temporal stability on the split's drives: TAE with the "
                                  "OXTS poses, flicker, and the metrics of the same outputs"),
    stabilize: str = typer.Option("none", "--stabilize", help="with --temporal: none | scale | flow"),
    max_frames: int = typer.Option(100, "--max-frames", help="with --temporal: frames a drive"),
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Score a metric model on a KITTI-format split with the BTS protocol; reports FPS too. With
    --temporal, the stability of its depth over each drive of the split instead."""
    from .. import api
    from ..data.kitti import DataPaths, read_split
    from ..evaluation import Protocol
    from ..evaluation import evaluate as run_eval
    from ..predict import Predictor

    set_threads(threads)
    protocol = Protocol(_crop(garg_crop, eigen_crop, no_crop), kb_crop, align=align)
    paths = DataPaths.resolve(data_root, raw_root, gt_root, test_split=split_file)
    if temporal:
        from ..stabilize import check_mode

        check_mode(stabilize)
    m = api.load(model, weights, device=device) if model else api.load(weights, device=device)
    if temporal:
        return _temporal(m, paths, stabilize, max_frames, device, json_out)
    with console.status("evaluating"):
        res = run_eval(Predictor(m, device=device), read_split(paths.splits["test_split"]), paths.raw_root,
                       paths.gt_root, protocol, save_png)
    _print_metrics(res, json_out)


@one_line_errors
def eval_pngs(
    pred_dir: Path = typer.Option(..., "--pred-dir"),
    gt_root: Path = typer.Option(..., "--gt-root"),
    split_file: Path = typer.Option(..., "--split-file"),
    garg_crop: GargOpt = False,
    eigen_crop: EigenOpt = False,
    no_crop: NoCropOpt = False,
    kb_crop: KbOpt = False,
    json_out: JsonOpt = None,
) -> None:
    """Score prediction PNGs (depth x 256) named after the split's RGB paths, as BTS's eval_with_pngs."""
    from ..data.kitti import read_split
    from ..evaluation import Protocol
    from ..evaluation import eval_pngs as run_eval_pngs

    protocol = Protocol(_crop(garg_crop, eigen_crop, no_crop), kb_crop)
    _print_metrics(run_eval_pngs(pred_dir, gt_root, read_split(split_file), protocol), json_out)


def _temporal(model, paths, stabilize, max_frames, device, json_out) -> None:
    from ..data.kitti import read_split
    from ..io import atomic_write
    from ..predict import Predictor
    from ..workflows import evaluate_temporal

    dense = paths.dense_root
    with console.status("temporal evaluation") as status:
        res = evaluate_temporal(Predictor(model, device=device), read_split(paths.splits["test_split"]), paths.raw_root,
                                paths.gt_root, stabilize, max_frames, dense, progress=lambda n: status.update(f"{n} frames"))
    out.print(f"{res['frames']} frames of {res['drives']} drives ({stabilize}): TAE {res['tae']:.4f}, flicker "
              f"{res['flicker']:.4f}; AbsRel {res['abs_rel']:.4f}, d1 {res['d1']:.4f} over {res['annotated']} annotated "
              f"frames; stabiliser {res['stabilize_ms']:.1f} ms a frame", highlight=False)
    if json_out:
        atomic_write(json_out, lambda p: p.write_text(json.dumps(res, indent=1)))


def _print_metrics(res: dict, json_out: Optional[Path]) -> None:
    from ..evaluation import METRIC_KEYS
    from ..io import atomic_write

    table = Table(title=f"KITTI metrics over {res['images']} images ({res['skipped']} without GT skipped)")
    keys = [*METRIC_KEYS, *(["fps"] if "fps" in res else [])]
    for k in keys:
        table.add_column(k)
    table.add_row(*(f"{res[k]:.4f}" if k not in ("silog", "fps") else f"{res[k]:.3f}" for k in keys))
    out.print(table)
    if json_out:
        atomic_write(json_out, lambda p: p.write_text(json.dumps(res, indent=1)))


__all__ = ["ConfigError", "eval_pngs", "evaluate", "train"]
