"""Command-line layer: each command parses flags and calls one library function."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import FastDPTError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Online monocular depth estimation with efficient Dense Prediction Transformers.")
console = Console(stderr=True)
out = Console()


def _fail(e: Exception) -> None:
    console.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
        return h, w
    except ValueError:
        raise typer.BadParameter(f"expected HxW, e.g. 352x1216, got {text!r}") from None


@app.command()
def models(
    pattern: Optional[str] = typer.Argument(None, help="a group (official, study, study@192x640) or a glob"),
    macs: bool = typer.Option(False, "--macs", help="also count MACs at each preset's network size"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the list as JSON"),
) -> None:
    """List presets with their canonical names and parameter counts."""
    import torch

    from .bench import count_macs, count_params
    from .config import PRESETS, list_models
    from .models import DPT

    rows = []
    for name in list_models(pattern):
        p = PRESETS[name]
        with torch.device("meta"):
            n_params = count_params(DPT(p.config))
        row = {"name": name, "canonical": p.config.name, "params": n_params, "output": p.config.output_kind,
               "weights": p.weights or "", "groups": list(p.groups)}
        if macs:
            row["macs"] = count_macs(p.config, p.config.input_size)
        rows.append(row)
    if json_out:
        json_out.write_text(json.dumps(rows, indent=1))
    table = Table(title=f"fastdpt presets ({len(rows)})")
    for col in ("name", "canonical name", "params (M)", *(["GMACs"] if macs else []), "output", "official weights"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"] if r["name"] != r["canonical"] else "", r["canonical"], f"{r['params'] / 1e6:.2f}",
                      *([f"{r['macs'] / 1e9:.1f}"] if macs else []), r["output"], "yes" if r["weights"] else "")
    out.print(table)


@app.command()
def predict(
    images: List[Path] = typer.Argument(..., help="image files"),
    model: str = typer.Option("dpt-hybrid-midas", "--model", "-m", help="preset, canonical name or .safetensors checkpoint"),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="weight file (official .pt, HF or fastdpt)"),
    outdir: Path = typer.Option(Path("out"), "--outdir", "-o"),
    save_npy: bool = typer.Option(False, "--save-npy", help="also write <stem>.npy (float32, image size)"),
    device: str = typer.Option("cpu", "--device"),
    threads: Optional[int] = typer.Option(None, "--threads"),
) -> None:
    """Predict depth for images: a colour-mapped PNG per image (and .npy with --save-npy)."""
    import torch

    from . import api
    from .predict import Predictor, write_outputs

    if threads:
        torch.set_num_threads(threads)
    try:
        predictor = Predictor(api.load(model, weights, device=device), device=device)
    except FastDPTError as e:
        _fail(e)
    failed = 0
    for path in images:
        try:
            res = predictor.predict(path)
        except FastDPTError as e:
            console.print(f"[yellow]skipped:[/yellow] {e}", highlight=False)
            failed += 1
            continue
        for f in write_outputs(res, path.stem, outdir, save_npy=save_npy):
            out.print(str(f), highlight=False)
    if failed:
        console.print(f"{failed} of {len(images)} images could not be read")
        raise typer.Exit(1)


@app.command()
def bench(
    names: List[str] = typer.Argument(..., help="presets, canonical names or groups (e.g. study)"),
    input_size: str = typer.Option("352x1216", "--input-size", help="frame size HxW fed to the pipeline"),
    batch_size: int = typer.Option(1, "--batch-size"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (reported)"),
    device: str = typer.Option("cpu", "--device"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 | bf16 (autocast)"),
    runs: int = typer.Option(10, "--runs"),
    warmup: int = typer.Option(2, "--warmup"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="report speed-up over this variant, measured in the same run"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the rows as JSON"),
) -> None:
    """Parameters, MACs, latency (median, p90), FPS, throughput and memory of variants."""
    from .bench import bench_variant, environment
    from .config import resolve_names

    size = _size(input_size)
    try:
        todo = resolve_names(names)
        if baseline:
            resolve_names([baseline])
    except FastDPTError as e:
        _fail(e)
    if device == "cpu" and precision != "fp32":
        console.print(f"[yellow]warning:[/yellow] {precision} on a CPU without native support is far slower than fp32")
    rows = []
    order = ([baseline] if baseline and baseline not in todo else []) + todo
    with console.status("benchmarking") as status:
        for i, name in enumerate(order, 1):
            status.update(f"[{i}/{len(order)}] {name}")
            try:
                row = bench_variant(name, size, batch_size, device, precision, runs, warmup, threads)
            except FastDPTError as e:
                _fail(e)
            rows.append(row)
            console.print(f"[{i}/{len(order)}] {name}: {row.latency_ms_median:.1f} ms, {row.fps:.2f} FPS", highlight=False)
    if baseline:
        base = next(r for r in rows if r.name == baseline)
        for r in rows:
            r.speedup = round(base.latency_ms_median / r.latency_ms_median, 3)
    table = Table(title=f"fastdpt bench: {size[0]}x{size[1]} frames, {device}, {precision}, {rows[0].threads} threads")
    for col in ("variant", "net", "params (M)", "GMACs", "latency ms (p50/p90)", "FPS", "throughput", "peak MB",
                *(["speed-up"] if baseline else [])):
        table.add_column(col)
    for r in rows:
        table.add_row(r.name, r.net_size, f"{r.params / 1e6:.1f}", f"{r.macs / 1e9:.1f}",
                      f"{r.latency_ms_median:.1f} / {r.latency_ms_p90:.1f}", f"{r.fps:.2f}", f"{r.throughput:.2f}",
                      f"{r.peak_mem_mb:.0f}", *([f"{r.speedup:.2f}x"] if baseline else []))
    out.print(table)
    if json_path:
        payload = {"environment": environment(), "command": " ".join(sys.argv), "rows": [r.as_dict() for r in rows]}
        tmp = json_path.with_name(json_path.name + ".part")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, json_path)


@app.command("weights")
def weights_cmd(
    preset: str = typer.Argument(..., help="dpt-hybrid-midas | dpt-hybrid-kitti | dpt-hybrid-nyu"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="cache folder (default $FASTDPT_CACHE or ~/.cache/fastdpt)"),
) -> None:
    """Download a preset's official weights into the cache (sha256-checked) and print the path."""
    from .weights import resolve_weights

    try:
        with console.status(f"fetching {preset}"):
            path = resolve_weights(preset, cache=cache)
    except FastDPTError as e:
        _fail(e)
    out.print(str(path), highlight=False)


@app.command("warm-start")
def warm_start_cmd(
    model: str = typer.Argument(..., help="preset or canonical name of the variant to build"),
    init: Path = typer.Option(..., "--init", help="weights to start from (official, HF or fastdpt)"),
    output: Path = typer.Option(..., "--output", "-o", help="fastdpt .safetensors checkpoint to write"),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights", help="timm CNN checkpoint, or 'hub'"),
) -> None:
    """Build a (modified) variant from existing weights, print the report, save a checkpoint."""
    from .api import create_model
    from .weights import save_checkpoint

    try:
        m = create_model(model, init=init, backbone_weights=backbone_weights)
    except FastDPTError as e:
        _fail(e)
    console.print(str(m.load_report), highlight=False)
    out.print(str(save_checkpoint(m, output, {"init": str(init)})), highlight=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
