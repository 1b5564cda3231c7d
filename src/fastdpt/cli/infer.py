"""Inference commands: predict, video, camera, stream, serve."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import ConfigError, FastDPTError
from ..io import MAX_PIXELS, check_output_dir
from ..options import DEFAULT_CMAP, MAX_CONNECTIONS, MAX_UPLOAD_MB
from .common import (BackendOpt, CmapOpt, DeviceOpt, ModelOpt, PrecisionOpt, StatsOpt, ThreadsOpt, WeightsOpt,
                     build_predictor, check_model, console, fail, one_line_errors, out)


@one_line_errors
def predict(
    inputs: List[str] = typer.Argument(..., help="image files, folders (recursive), globs or .txt lists"),
    model: ModelOpt = "dpt-hybrid-midas",
    weights: WeightsOpt = None,
    outdir: Path = typer.Option(Path("out"), "--outdir", "-o"),
    formats: List[str] = typer.Option(["color"], "--format", "-f", help="color | png16 | npy | pfm | ply (repeatable)"),
    save_npy: bool = typer.Option(False, "--save-npy", help="also write <stem>.npy (float32, image size)"),
    cmap: CmapOpt = DEFAULT_CMAP,
    pred_only: bool = typer.Option(False, "--pred-only", help="colour map alone instead of beside the input"),
    focal: Optional[float] = typer.Option(None, "--focal", help="focal length in pixels, for .ply"),
    calib: Optional[Path] = typer.Option(None, "--calib", help="KITTI calib_cam_to_cam.txt, for .ply (P_rect_02)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing outputs (default: keep them, skip done inputs)"),
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "auto",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Predict depth for images. Outputs keep the inputs' relative paths under --outdir; existing
    outputs are kept unless --overwrite; an unusable input is reported on one line and skipped (exit code 1)."""
    from rich.progress import Progress

    from ..data.kitti import calib_focal
    from ..io import check_formats, check_output_dir, collect_inputs
    from ..viz import lookup_table
    from ..workflows import predict_files

    check_model(model, weights)
    files, missing = collect_inputs(inputs)
    if calib is not None:
        focal = calib_focal(calib)
    formats = tuple(dict.fromkeys(tuple(formats) + (("npy",) if save_npy else ())))
    check_formats(formats, focal=focal)  # every option is checked before a model is loaded
    lookup_table(cmap)
    check_output_dir(outdir)
    if not files:
        for m in missing:
            console.print(f"[yellow]skipped:[/yellow] {m}", highlight=False)
        raise FastDPTError("no image found in the given inputs")
    predictor = build_predictor(model, weights, device, backend, precision, threads)
    for m in missing:
        console.print(f"[yellow]skipped:[/yellow] {m}", highlight=False)
    with Progress(console=console, transient=True, disable=len(files) < 2) as bar:
        task = bar.add_task("predicting", total=len(files))

        def report(o):
            if o.error:
                console.print(f"[yellow]skipped:[/yellow] {o.error}", highlight=False, soft_wrap=True)
            for f in o.written:
                out.print(str(f), highlight=False, soft_wrap=True)
            if o.kept and not o.written and not o.error:
                console.print(f"kept: {o.source} (outputs exist; --overwrite to redo)", highlight=False, soft_wrap=True)
            bar.advance(task)

        outcomes = predict_files(predictor, files, outdir, formats, cmap, side_by_side=not pred_only, focal=focal,
                                 overwrite=overwrite, on_file=report)
    failed = len(missing) + sum(o.error is not None for o in outcomes)
    if failed:
        console.print(f"{failed} of {len(files) + len(missing)} inputs could not be used")
        raise typer.Exit(1)


AUTO_BATCH_MAX = 4  # offline batches by default up to this many (measured on 2 cores: 1.03-1.09x; beyond, untested)


def _run_stream(source_factory, output, model, weights, backend, precision, device, threads, realtime,
                pred_only, cmap, stats_path, max_frames=None, strict=False, overwrite=False, batch=1, codec="auto",
                stabilize="none"):
    """``batch`` None: offline, as many frames at a time as the backend runs together (OpenVINO: a stream a
    thread); online (``realtime``), one."""
    from ..stream import StreamInterrupted, VideoSink, check_paths, run_stream, write_stats

    predictor = None
    try:
        source = source_factory()
        if output is not None:  # the output is checked before any model is loaded
            check_paths(source, output)
        sink = VideoSink(output, source.fps, side_by_side=not pred_only, cmap=cmap, overwrite=overwrite,
                         codec=codec) if output else None
        if batch is not None and (batch < 1 or (realtime and batch > 1)):
            raise ConfigError("--batch must be 1 with --realtime or a camera (online), and at least 1 otherwise")
        from ..stabilize import check_mode

        check_mode(stabilize)
        if stats_path is not None:
            check_output_dir(Path(stats_path).parent)
        check_model(model, weights)
        predictor = build_predictor(model, weights, device, backend, precision, threads)
        if batch is None:
            together = predictor.backend.streams()
            batch = together if not realtime and 1 < together <= AUTO_BATCH_MAX else 1
            if batch > 1:
                console.print(f"throughput mode: {batch} frames at a time, as {predictor.backend.name} runs them "
                              "together (--batch 1: each frame alone, for per-frame latency)", highlight=False)
        with console.status("starting") as status:
            def live(st):
                status.update(f"{st.frames_out} frames, {st.frames_out / max(st.wall_s, 1e-9):.1f} FPS, "
                              f"{st.dropped} dropped")
            stats = run_stream(source, predictor, sink, realtime=realtime, max_frames=max_frames, strict=strict,
                               on_frame=live, batch_size=batch, stabilize=stabilize,
                               flicker=stats_path is not None or stabilize != "none")
    except StreamInterrupted as e:
        console.print(f"stopped: {e}", highlight=False, soft_wrap=True)
        if stats_path:
            write_stats(e.stats, stats_path)
        raise typer.Exit(130)
    except FastDPTError as e:
        fail(e)
    finally:  # its temporary export folder goes now, not at interpreter exit (which Ctrl-C skips)
        if predictor is not None:
            predictor.close()
    summary = stats.summary()
    out.print(f"{summary['frames_out']} frames out of {summary['frames_in']} in {summary['wall_s']:.1f} s: "
              f"{summary['effective_fps']:.2f} FPS end to end, {summary['inference_fps']:.2f} inferences/s, "
              f"{summary['dropped']} dropped; latency p50/p90/p99 {summary['latency_ms_p50']:.0f}/"
              f"{summary['latency_ms_p90']:.0f}/{summary['latency_ms_p99']:.0f} ms"
              + (f"; flicker {summary['flicker']:.4f}" if math.isfinite(summary['flicker']) else "")
              + (f" ({stabilize}-stabilised, +{summary['stabilize_ms_median']:.1f} ms a frame)" if stabilize != "none" else "")
              + (f" -> {output}" if output else ""), highlight=False)
    if stats.problems or stats.resized:
        parts = [f"{n} {kind.replace('_', ' ')}" for kind, n in stats.problems.items()]
        parts += [f"{stats.resized} of another size (resized for the video)"] if stats.resized else []
        console.print(f"[yellow]warning:[/yellow] frames not as expected: {', '.join(parts)}; "
                      + "; ".join(stats.messages[:3]), highlight=False, soft_wrap=True)
    if stats_path:
        write_stats(stats, stats_path)


StrictOpt = typer.Option(False, "--strict", help="stop at the first unreadable, oversized or missing frame")
BatchOpt = typer.Option(1, "--batch", help="throughput mode for offline video: frames a batch (1: online)")
VideoBatchOpt = typer.Option(None, "--batch", help="frames a batch (throughput mode; default: as many as the backend "
                             "runs together up to 4, 2 on OpenVINO with 2 threads; 1 with --realtime or on other "
                             "backends; 1: each frame alone)")
CodecOpt = typer.Option("auto", "--codec", help="auto (H.264 when PyAV is installed) | h264 | mp4v")
StabilizeOpt = typer.Option("none", "--stabilize", help="none | scale | flow: causal stabilisation of the depth stream")
OverwriteVideoOpt = typer.Option(False, "--overwrite", help="replace an existing output video")


def video(
    source: Path = typer.Argument(..., help="input video"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="output video (side-by-side by default)"),
    model: ModelOpt = "dpt-hybrid-midas",
    weights: WeightsOpt = None,
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "auto",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    realtime: bool = typer.Option(False, "--realtime", help="keep the source rate; drop frames when behind"),
    pred_only: bool = typer.Option(False, "--pred-only", help="depth only instead of side by side"),
    cmap: CmapOpt = DEFAULT_CMAP,
    stats: StatsOpt = None,
    strict: bool = StrictOpt,
    overwrite: bool = OverwriteVideoOpt,
    batch: Optional[int] = VideoBatchOpt,
    codec: str = CodecOpt,
    stabilize: str = StabilizeOpt,
) -> None:
    """Depth for every frame of a video, written as a video at the source frame rate."""
    from ..stream import VideoSource

    _run_stream(lambda: VideoSource(str(source)), output, model, weights, backend, precision, device, threads,
                realtime, pred_only, cmap, stats, strict=strict, overwrite=overwrite, batch=batch, codec=codec,
                stabilize=stabilize)


def camera(
    index: int = typer.Option(0, "--index", min=0, help="camera index (0, 1, ...)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o"),
    model: ModelOpt = "dpt-hybrid-midas",
    weights: WeightsOpt = None,
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "auto",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    frames: Optional[int] = typer.Option(None, "--frames", help="stop after N frames"),
    pred_only: bool = typer.Option(False, "--pred-only"),
    cmap: CmapOpt = DEFAULT_CMAP,
    stats: StatsOpt = None,
    overwrite: bool = OverwriteVideoOpt,
    codec: str = CodecOpt,
    stabilize: str = StabilizeOpt,
) -> None:
    """Depth from a camera, live (frames are dropped when inference is slower than the camera)."""
    from ..stream import VideoSource

    _run_stream(lambda: VideoSource(index), output, model, weights, backend, precision, device, threads, True,
                pred_only, cmap, stats, max_frames=frames, overwrite=overwrite, codec=codec, stabilize=stabilize)


def stream(
    folder: Path = typer.Argument(..., help="a folder of frames, e.g. a KITTI drive's image_02/data"),
    fps: float = typer.Option(10.0, "--fps", help="replay rate"),
    output: Optional[Path] = typer.Option(None, "--output", "-o"),
    model: ModelOpt = "dpt-hybrid-midas",
    weights: WeightsOpt = None,
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "auto",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    realtime: bool = typer.Option(False, "--realtime"),
    pred_only: bool = typer.Option(False, "--pred-only"),
    cmap: CmapOpt = DEFAULT_CMAP,
    stats: StatsOpt = None,
    strict: bool = StrictOpt,
    overwrite: bool = OverwriteVideoOpt,
    batch: int = BatchOpt,
    codec: str = CodecOpt,
    stabilize: str = StabilizeOpt,
) -> None:
    """Replay an image sequence at a frame rate through the online pipeline."""
    from ..stream import ImageSequence

    _run_stream(lambda: ImageSequence(folder, fps), output, model, weights, backend, precision, device, threads,
                realtime, pred_only, cmap, stats, strict=strict, overwrite=overwrite, batch=batch, codec=codec,
                stabilize=stabilize)


@one_line_errors
def serve(
    model: ModelOpt = "dpt-hybrid-midas",
    weights: WeightsOpt = None,
    host: str = typer.Option("127.0.0.1", "--host", help="listen address; anything but loopback needs a token"),
    port: int = typer.Option(8000, "--port"),
    token: Optional[str] = typer.Option(None, "--token", help="require this bearer token on every route but "
                                        "/healthz and the page (or $FASTDPT_TOKEN)"),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="read the token from a file, e.g. a Docker "
                                              "secret (or $FASTDPT_TOKEN_FILE)"),
    allow_no_token: bool = typer.Option(False, "--allow-no-token", help="serve beyond loopback without a token"),
    max_mb: float = typer.Option(float(MAX_UPLOAD_MB), "--max-mb", help="upload size limit, MB"),
    max_pixels: int = typer.Option(MAX_PIXELS, "--max-pixels", help="decoded image size limit"),
    workers: int = typer.Option(1, "--workers", help="threads that decode, infer and encode"),
    queue: int = typer.Option(8, "--queue", help="requests that may wait for a worker; more get 503"),
    max_connections: int = typer.Option(MAX_CONNECTIONS, "--max-connections", help="open connections at most"),
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "auto",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Serve depth over HTTP (POST /v1/depth, GET /v1/models, /healthz, /metrics, and a web page at /)."""
    from ..serve import Limits, read_token
    from ..serve import serve as run_server

    check_model(model, weights)
    if not max_mb > 0:
        raise ConfigError(f"--max-mb must be positive, got {max_mb:g}")
    limits = Limits(max_bytes=int(max_mb * 2**20), max_pixels=max_pixels, workers=workers, queue=queue)
    secret = read_token(token, token_file)
    if secret is None and not allow_no_token and host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"serving on {host} without a token would let anyone use it: give --token, "
                          "--token-file or FASTDPT_TOKEN (or --allow-no-token if that is intended)")
    predictor = build_predictor(model, weights, device, backend, precision, threads)
    run_server(predictor, host, port, secret, limits=limits, allow_no_token=allow_no_token,
               max_connections=max_connections)
