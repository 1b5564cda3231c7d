"""Data commands: data synth, data check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .common import console, one_line_errors, out, parse_size

data_app = typer.Typer(no_args_is_help=True, help="KITTI-format data: synthetic scenes and split checks.")


@data_app.command("synth")
@one_line_errors
def synth(
    out_dir: Path = typer.Option(..., "--out", help="folder to write the KITTI-format tree into"),
    drives: int = typer.Option(4, "--drives"),
    frames: int = typer.Option(40, "--frames", help="frames per drive (the first and last 5 get no GT)"),
    size: str = typer.Option("375x1242", "--size", help="image size HxW"),
    seed: int = typer.Option(0, "--seed"),
    workers: Optional[int] = typer.Option(None, "--workers", help="render processes (default: up to 2)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a dataset already in --out"),
) -> None:
    """Render procedural driving sequences in KITTI's on-disk format."""
    from rich.progress import Progress

    from ..data.synthetic import synth as render

    hw = parse_size(size)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("rendering", total=drives * frames)
        res = render(out_dir, drives, frames, hw, seed, workers, progress=lambda done, total: bar.update(task, completed=done),
                     overwrite=overwrite)
    out.print(f"{res.frames} frames ({res.annotated} annotated) in {res.seconds:.1f} s -> {res.out}", highlight=False)
    for split, names in res.drives.items():
        out.print(f"  {split}: {', '.join(names)}  ({res.out / 'splits' / (split + '_files_with_gt.txt')})", highlight=False)


@data_app.command("check")
@one_line_errors
def check(
    raw_root: Path = typer.Option(..., "--raw-root"),
    gt_root: Path = typer.Option(..., "--gt-root"),
    split: Optional[List[str]] = typer.Option(None, "--split", help="named split (fetched/cached), repeatable"),
    split_file: Optional[List[Path]] = typer.Option(None, "--split-file", help="split list path, repeatable"),
    write_filtered: Optional[Path] = typer.Option(None, "--write-filtered", help="write the usable lines here"),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Count listed frames, missing images, missing annotations and usable frames per split."""
    from ..data.kitti import check_splits

    rows = check_splits(raw_root, gt_root, split or [], split_file or [], write_filtered)
    table = Table(title="split check")
    for col in ("split", "listed", "images not found", "annotations not found", "usable"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["split"], str(r["listed"]), str(r["images_missing"]), str(r["annotations_missing"]), str(r["usable"]))
    out.print(table)
    if json_out:
        from ..io import write_text

        write_text(json_out, json.dumps(rows, indent=1))
