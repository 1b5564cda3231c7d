"""Command-line layer: each command parses flags and calls one library function."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import FastDPTError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Online monocular depth estimation with efficient Dense Prediction Transformers.")
console = Console(stderr=True)
out = Console()


# options shared by every command that runs a model
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="preset, canonical name, .safetensors or .onnx")]
WeightsOpt = Annotated[Optional[Path], typer.Option("--weights", "-w", help="weight file (official .pt, HF or fastdpt)")]
BackendOpt = Annotated[str, typer.Option("--backend", help="torch | compile | onnxruntime")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32 | fp16 | bf16 (GPU) | int8 (onnxruntime)")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu | cuda")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="torch / ONNX Runtime threads")]
CmapOpt = Annotated[str, typer.Option("--cmap", help="Spectral_r | inferno | magma | turbo | viridis | gray")]
StatsOpt = Annotated[Optional[Path], typer.Option("--stats", help="write latency/FPS/drops as JSON")]


def _predictor(model, weights, device, backend, precision, threads):
    """Set the thread count and build the Predictor every model-running command uses."""
    import torch

    from .predict import Predictor

    if threads:
        torch.set_num_threads(threads)
    return Predictor(model, weights, device=device, backend=backend, precision=precision, threads=threads)


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
    from .bench import config_params, count_macs
    from .config import PRESETS, list_models

    rows = []
    for name in list_models(pattern):
        p = PRESETS[name]
        n_params = config_params(p.config)
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
    inputs: List[str] = typer.Argument(..., help="image files, folders (recursive), globs or .txt lists"),
    model: ModelOpt = "dpt-hybrid-midas",
    weights: WeightsOpt = None,
    outdir: Path = typer.Option(Path("out"), "--outdir", "-o"),
    formats: List[str] = typer.Option(["color"], "--format", "-f", help="color | png16 | npy | pfm | ply (repeatable)"),
    save_npy: bool = typer.Option(False, "--save-npy", help="also write <stem>.npy (float32, image size)"),
    cmap: CmapOpt = "Spectral_r",
    pred_only: bool = typer.Option(False, "--pred-only", help="colour map alone instead of beside the input"),
    focal: Optional[float] = typer.Option(None, "--focal", help="focal length in pixels, for .ply"),
    calib: Optional[Path] = typer.Option(None, "--calib", help="KITTI calib_cam_to_cam.txt, for .ply (P_rect_02)"),
    backend: BackendOpt = "torch",
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Predict depth for images; an unreadable image is reported and skipped (exit code 1)."""
    from rich.progress import Progress

    from .data.kitti import calib_focal
    from .io import collect_inputs
    from .predict import read_image, write_outputs

    try:
        files, missing = collect_inputs(inputs)
        if calib is not None:
            focal = calib_focal(calib)
        predictor = _predictor(model, weights, device, backend, precision, threads)
    except FastDPTError as e:
        _fail(e)
    for m in missing:
        console.print(f"[yellow]skipped:[/yellow] {m}", highlight=False)
    failed = len(missing)
    if not files:
        _fail(FastDPTError("no image found in the given inputs"))
    with Progress(console=console, transient=True, disable=len(files) < 2) as bar:
        task = bar.add_task("predicting", total=len(files))
        for path in files:
            try:
                image = read_image(path)
                res = predictor.predict(image)
                written = write_outputs(res, path.stem, outdir, save_npy, tuple(formats), image, cmap,
                                        side_by_side=not pred_only, focal=focal)
            except FastDPTError as e:
                console.print(f"[yellow]skipped:[/yellow] {e}", highlight=False)
                failed += 1
            else:
                for f in written:
                    out.print(str(f), highlight=False)
            bar.advance(task)
    if failed:
        console.print(f"{failed} of {len(files) + len(missing)} inputs could not be used")
        raise typer.Exit(1)


@app.command()
def bench(
    names: List[str] = typer.Argument(..., help="presets, canonical names or groups (e.g. study)"),
    input_size: str = typer.Option("352x1216", "--input-size", help="frame size HxW fed to the pipeline"),
    batch_size: int = typer.Option(1, "--batch-size"),
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "fp32",
    backend: BackendOpt = "torch",
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
    rows = []
    order = ([baseline] if baseline and baseline not in todo else []) + todo
    with console.status("benchmarking") as status:
        for i, name in enumerate(order, 1):
            status.update(f"[{i}/{len(order)}] {name}")
            try:
                row = bench_variant(name, size, batch_size, device, precision, runs, warmup, threads, backend=backend)
            except FastDPTError as e:
                _fail(e)
            rows.append(row)
            console.print(f"[{i}/{len(order)}] {name}: {row.latency_ms_median:.1f} ms, {row.fps:.2f} FPS", highlight=False)
    if baseline:
        base = next(r for r in rows if r.name == baseline)
        for r in rows:
            r.speedup = round(base.latency_ms_median / r.latency_ms_median, 3)
    table = Table(title=f"fastdpt bench: {size[0]}x{size[1]} frames, {device}, {backend} {precision}, "
                        f"{rows[0].threads} threads")
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


@app.command("export")
def export_cmd(
    model: str = typer.Argument(..., help="preset, canonical name or .safetensors checkpoint"),
    weights: WeightsOpt = None,
    fmt: str = typer.Option("onnx", "--format", help="onnx"),
    int8: bool = typer.Option(False, "--int8", help="also quantise to int8 (ONNX Runtime dynamic quantisation)"),
    output: Path = typer.Option(..., "--output", "-o", help="the .onnx file to write"),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="network input HxW (default: the variant's)"),
    untrained: bool = typer.Option(False, "--untrained", help="export random weights (speed tests only)"),
) -> None:
    """Export to ONNX with the variant's name in the metadata; check it against PyTorch."""
    from . import api
    from .runtime import export_onnx, quantize_int8, verification_inputs, compare

    if fmt != "onnx":
        _fail(FastDPTError(f"unknown export format {fmt!r}; only onnx is supported"))
    try:
        m = api.create_model(model) if untrained else api.load(model, weights)
        size = _size(input_size) if input_size else m.config.input_size
        with console.status("exporting"):
            path = export_onnx(m, output, size)
        inputs = verification_inputs(size)
        err = compare(m, path, inputs)
        out.print(f"{path}: max abs error {err['max_abs']:.3g}, max rel error {err['max_rel']:.3g} "
                  f"({len(inputs)} random and synthetic-scene inputs)", highlight=False)
        if int8:
            q = quantize_int8(path, path.with_name(path.stem + "-int8.onnx"))
            err = compare(m, q, inputs)
            out.print(f"{q}: int8 vs PyTorch fp32: max abs error {err['max_abs']:.3g}, "
                      f"max rel error {err['max_rel']:.3g}", highlight=False)
    except FastDPTError as e:
        _fail(e)


def _run_stream(source_factory, output, model, weights, backend, precision, device, threads, realtime,
                pred_only, cmap, stats_path, max_frames=None):
    from .stream import VideoSink, run_stream, write_stats

    try:
        source = source_factory()
        predictor = _predictor(model, weights, device, backend, precision, threads)
        sink = VideoSink(output, source.fps, side_by_side=not pred_only, cmap=cmap) if output else None
        with console.status("starting") as status:
            def live(st):
                status.update(f"{st.frames_out} frames, {st.frames_out / max(st.wall_s, 1e-9):.1f} FPS, "
                              f"{st.dropped} dropped")
            stats = run_stream(source, predictor, sink, realtime=realtime, max_frames=max_frames, on_frame=live)
    except FastDPTError as e:
        _fail(e)
    summary = stats.summary()
    out.print(f"{summary['frames_out']} frames out of {summary['frames_in']} in {summary['wall_s']:.1f} s: "
              f"{summary['effective_fps']:.2f} FPS end to end, {summary['inference_fps']:.2f} inferences/s, "
              f"{summary['dropped']} dropped; latency p50/p90/p99 {summary['latency_ms_p50']:.0f}/"
              f"{summary['latency_ms_p90']:.0f}/{summary['latency_ms_p99']:.0f} ms"
              + (f" -> {output}" if output else ""), highlight=False)
    if stats_path:
        write_stats(stats, stats_path)


@app.command("video")
def video_cmd(
    source: Path = typer.Argument(..., help="input video"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="output .mp4 (side-by-side by default)"),
    model: ModelOpt = "dpt-hybrid-midas",
    weights: WeightsOpt = None,
    backend: BackendOpt = "torch",
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    realtime: bool = typer.Option(False, "--realtime", help="keep the source rate; drop frames when behind"),
    pred_only: bool = typer.Option(False, "--pred-only", help="depth only instead of side by side"),
    cmap: CmapOpt = "Spectral_r",
    stats: StatsOpt = None,
) -> None:
    """Depth for every frame of a video, written as a video at the source frame rate."""
    from .stream import VideoSource

    _run_stream(lambda: VideoSource(str(source)), output, model, weights, backend, precision, device, threads,
                realtime, pred_only, cmap, stats)


@app.command("camera")
def camera_cmd(
    index: int = typer.Option(0, "--index"),
    output: Optional[Path] = typer.Option(None, "--output", "-o"),
    model: ModelOpt = "dpt-hybrid-midas",
    weights: WeightsOpt = None,
    backend: BackendOpt = "torch",
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    frames: Optional[int] = typer.Option(None, "--frames", help="stop after N frames"),
    pred_only: bool = typer.Option(False, "--pred-only"),
    cmap: CmapOpt = "Spectral_r",
    stats: StatsOpt = None,
) -> None:
    """Depth from a camera, live (frames are dropped when inference is slower than the camera)."""
    from .stream import VideoSource

    _run_stream(lambda: VideoSource(index), output, model, weights, backend, precision, device, threads, True,
                pred_only, cmap, stats, max_frames=frames)


@app.command("stream")
def stream_cmd(
    folder: Path = typer.Argument(..., help="a folder of frames, e.g. a KITTI drive's image_02/data"),
    fps: float = typer.Option(10.0, "--fps", help="replay rate"),
    output: Optional[Path] = typer.Option(None, "--output", "-o"),
    model: ModelOpt = "dpt-hybrid-midas",
    weights: WeightsOpt = None,
    backend: BackendOpt = "torch",
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    realtime: bool = typer.Option(False, "--realtime"),
    pred_only: bool = typer.Option(False, "--pred-only"),
    cmap: CmapOpt = "Spectral_r",
    stats: StatsOpt = None,
) -> None:
    """Replay an image sequence at a frame rate through the online pipeline."""
    from .stream import ImageSequence

    _run_stream(lambda: ImageSequence(folder, fps), output, model, weights, backend, precision, device, threads,
                realtime, pred_only, cmap, stats)


@app.command("serve")
def serve_cmd(
    model: ModelOpt = "dpt-hybrid-midas",
    weights: WeightsOpt = None,
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    token: Optional[str] = typer.Option(None, "--token", envvar="FASTDPT_TOKEN", help="require this bearer token"),
    max_mb: float = typer.Option(20.0, "--max-mb", help="upload size limit"),
    backend: BackendOpt = "torch",
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Serve depth over HTTP (POST /v1/depth, GET /v1/models, /healthz, /metrics, and a web page at /)."""
    from .serve import serve

    try:
        predictor = _predictor(model, weights, device, backend, precision, threads)
    except FastDPTError as e:
        _fail(e)
    serve(predictor, host, port, token, int(max_mb * 2**20))


@app.command("demo")
def demo_cmd(
    out_dir: Path = typer.Option(Path("demo"), "--out", help="folder for data, run, video and summary"),
    minutes: float = typer.Option(3.0, "--minutes", help="training time on this machine"),
    preset: str = typer.Option("fast-effb0-f64-128x416", "--preset"),
    drives: int = typer.Option(4, "--drives"),
    frames: int = typer.Option(40, "--frames"),
    threads: ThreadsOpt = None,
    force: bool = typer.Option(False, "--force", help="replace an earlier demo run in --out"),
) -> None:
    """Offline end to end: render synthetic drives, train the fastest preset, run it online on a held-out drive."""
    import torch

    from .demo import run_demo

    if threads:
        torch.set_num_threads(threads)
    try:
        run_demo(out_dir, minutes, preset, drives, frames, force=force, say=lambda m: out.print(m, highlight=False))
    except FastDPTError as e:
        _fail(e)


data_app = typer.Typer(no_args_is_help=True, help="KITTI-format data: synthetic scenes and split checks.")
app.add_typer(data_app, name="data")


@data_app.command("synth")
def data_synth(
    out_dir: Path = typer.Option(..., "--out", help="folder to write the KITTI-format tree into"),
    drives: int = typer.Option(4, "--drives"),
    frames: int = typer.Option(40, "--frames", help="frames per drive (the first and last 5 get no GT)"),
    size: str = typer.Option("375x1242", "--size", help="image size HxW"),
    seed: int = typer.Option(0, "--seed"),
    workers: Optional[int] = typer.Option(None, "--workers", help="render processes (default: up to 2)"),
) -> None:
    """Render procedural driving sequences in KITTI's on-disk format."""
    from rich.progress import Progress

    from .data.synthetic import synth

    try:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("rendering", total=drives * frames)
            res = synth(out_dir, drives, frames, _size(size), seed, workers,
                        progress=lambda done, total: bar.update(task, completed=done))
    except (FastDPTError, ValueError) as e:
        _fail(e)
    out.print(f"{res.frames} frames ({res.annotated} annotated) in {res.seconds:.1f} s -> {res.out}", highlight=False)
    for split, names in res.drives.items():
        out.print(f"  {split}: {', '.join(names)}  ({res.out / 'splits' / (split + '_files_with_gt.txt')})", highlight=False)


@data_app.command("check")
def data_check(
    raw_root: Path = typer.Option(..., "--raw-root"),
    gt_root: Path = typer.Option(..., "--gt-root"),
    split: Optional[List[str]] = typer.Option(None, "--split", help="named split (fetched/cached), repeatable"),
    split_file: Optional[List[Path]] = typer.Option(None, "--split-file", help="split list path, repeatable"),
    write_filtered: Optional[Path] = typer.Option(None, "--write-filtered", help="write the usable lines here"),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Count listed frames, missing images, missing annotations and usable frames per split."""
    from .data.kitti import check_split, read_split, split_format, split_path, write_split

    sources: list[tuple[str, Path]] = []
    try:
        for name in split or []:
            sources.append((name, split_path(name)))
        for f in split_file or []:
            sources.append((f.stem, f))
        if not sources:
            sources = [(n, split_path(n)) for n in ("eigen_full_train", "eigen_full_val", "eigen_test")]
        rows = []
        for name, path in sources:
            res = check_split(name, read_split(path), raw_root, gt_root)
            rows.append(res.row())
            if write_filtered:
                write_split(res.usable, write_filtered / f"{name}_filtered.txt", split_format(path))
    except FastDPTError as e:
        _fail(e)
    table = Table(title="split check")
    for col in ("split", "listed", "images not found", "annotations not found", "usable"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["split"], str(r["listed"]), str(r["images_missing"]), str(r["annotations_missing"]), str(r["usable"]))
    out.print(table)
    if json_out:
        json_out.write_text(json.dumps(rows, indent=1))


def _crop(garg: bool, eigen: bool) -> Optional[str]:
    if garg and eigen:
        raise typer.BadParameter("choose one of --garg-crop and --eigen-crop")
    return "garg" if garg else "eigen" if eigen else None


@app.command("train")
def train_cmd(
    model: str = typer.Option(..., "--model", "-m", help="variant to train (a metric .kitti head)"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="KITTI-format root (e.g. from `data synth`)"),
    raw_root: Optional[Path] = typer.Option(None, "--raw-root"),
    gt_root: Optional[Path] = typer.Option(None, "--gt-root"),
    train_split: Optional[Path] = typer.Option(None, "--train-split"),
    val_split: Optional[Path] = typer.Option(None, "--val-split"),
    out_dir: Path = typer.Option(..., "--out", help="run directory"),
    init: Optional[Path] = typer.Option(None, "--init", help="warm-start weights (official, HF or fastdpt)"),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights"),
    epochs: int = typer.Option(20, "--epochs"),
    batch_size: int = typer.Option(1, "--batch-size"),
    accumulate: int = typer.Option(1, "--accumulate"),
    lr: float = typer.Option(1e-5, "--lr"),
    weight_decay: float = typer.Option(0.01, "--weight-decay"),
    clip_value: float = typer.Option(0.5, "--clip-value", help="clip gradients by value (0: off)"),
    silog_lambda: float = typer.Option(0.5, "--silog-lambda"),
    precision: PrecisionOpt = "fp32",
    workers: int = typer.Option(2, "--workers"),
    seed: int = typer.Option(0, "--seed"),
    monitor: str = typer.Option("abs_rel", "--monitor", help="validation metric that picks best.safetensors"),
    kb_crop: bool = typer.Option(True, "--kb-crop/--no-kb-crop"),
    random_crop: Optional[str] = typer.Option(None, "--random-crop", help="HxW"),
    rotate: float = typer.Option(0.0, "--rotate", help="max rotation, degrees"),
    color: bool = typer.Option(False, "--color-jitter"),
    limit_train_batches: float = typer.Option(1.0, "--limit-train-batches"),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="also save the resume state every N steps"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow server (default: SQLite in the run)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out"),
) -> None:
    """Train a variant with the masked SILog loss (the study's recipe by default)."""
    from .training import TrainConfig, train

    cfg = TrainConfig(
        model=model, out=str(out_dir), data_root=_opt(data_root), raw_root=_opt(raw_root), gt_root=_opt(gt_root),
        train_split=_opt(train_split), val_split=_opt(val_split), init=_opt(init), backbone_weights=backbone_weights,
        epochs=epochs, batch_size=batch_size, accumulate=accumulate, lr=lr, weight_decay=weight_decay,
        clip_value=clip_value or None, silog_lambda=silog_lambda, precision=precision, workers=workers, seed=seed,
        monitor=monitor, kb_crop=kb_crop, random_crop=_size(random_crop) if random_crop else None, rotate_deg=rotate,
        color=color, limit_train_batches=int(limit_train_batches) if limit_train_batches > 1 else limit_train_batches,
        checkpoint_every=checkpoint_every, tracking_uri=tracking_uri,
    )
    try:
        res = train(cfg, resume=resume)
    except FastDPTError as e:
        _fail(e)
    out.print(json.dumps(res, indent=1))


def _opt(p: Optional[Path]) -> Optional[str]:
    return str(p) if p is not None else None


@app.command("eval")
def eval_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="variant (omit for a fastdpt checkpoint)"),
    weights: Path = typer.Option(..., "--weights", "-w"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    raw_root: Optional[Path] = typer.Option(None, "--raw-root"),
    gt_root: Optional[Path] = typer.Option(None, "--gt-root"),
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="default: <data-root>/splits/test_files_with_gt.txt"),
    garg_crop: bool = typer.Option(False, "--garg-crop"),
    eigen_crop: bool = typer.Option(False, "--eigen-crop"),
    kb_crop: bool = typer.Option(False, "--kb-crop"),
    json_out: Optional[Path] = typer.Option(None, "--json"),
    save_png: Optional[Path] = typer.Option(None, "--save-png", help="write uint16 predictions here"),
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Score a metric model on a KITTI-format split with the BTS protocol; reports FPS too."""
    import torch

    from . import api
    from .data.kitti import read_split
    from .evaluation import evaluate
    from .predict import Predictor

    if threads:
        torch.set_num_threads(threads)
    crop = _crop(garg_crop, eigen_crop)
    try:
        raw, gt, split = _eval_paths(data_root, raw_root, gt_root, split_file)
        m = api.load(model, weights, device=device) if model else api.load(weights, device=device)
        with console.status("evaluating"):
            res = evaluate(Predictor(m, device=device), read_split(split), raw, gt, crop, kb_crop,
                           str(save_png) if save_png else None)
    except (FastDPTError, ValueError) as e:
        _fail(e)
    _print_metrics(res, json_out)


@app.command("eval-pngs")
def eval_pngs_cmd(
    pred_dir: Path = typer.Option(..., "--pred-dir"),
    gt_root: Path = typer.Option(..., "--gt-root"),
    split_file: Path = typer.Option(..., "--split-file"),
    garg_crop: bool = typer.Option(False, "--garg-crop"),
    eigen_crop: bool = typer.Option(False, "--eigen-crop"),
    kb_crop: bool = typer.Option(False, "--kb-crop"),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Score prediction PNGs (depth x 256) named after the split's RGB paths, as BTS's eval_with_pngs."""
    from .data.kitti import read_split
    from .evaluation import eval_pngs

    try:
        res = eval_pngs(pred_dir, gt_root, read_split(split_file), _crop(garg_crop, eigen_crop), kb_crop)
    except (FastDPTError, ValueError) as e:
        _fail(e)
    _print_metrics(res, json_out)


def _eval_paths(data_root, raw_root, gt_root, split_file):
    if data_root is not None:
        raw_root = raw_root or data_root / "raw"
        gt_root = gt_root or data_root / "data_depth_annotated"
        split_file = split_file or data_root / "splits" / "test_files_with_gt.txt"
    if raw_root is None or gt_root is None or split_file is None:
        raise FastDPTError("give --data-root, or --raw-root, --gt-root and --split-file")
    return raw_root, gt_root, split_file


def _print_metrics(res: dict, json_out: Optional[Path]) -> None:
    from .evaluation import METRIC_KEYS

    table = Table(title=f"KITTI metrics over {res['images']} images ({res['skipped']} without GT skipped)")
    keys = [*METRIC_KEYS, *(["fps"] if "fps" in res else [])]
    for k in keys:
        table.add_column(k)
    table.add_row(*(f"{res[k]:.4f}" if k not in ("silog", "fps") else f"{res[k]:.3f}" for k in keys))
    out.print(table)
    if json_out:
        json_out.write_text(json.dumps(res, indent=1))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
