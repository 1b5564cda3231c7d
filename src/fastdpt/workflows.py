"""Multi-step workflows as library functions: the command line, benchmarks and tests call these.

- :func:`export_and_verify`: export to ONNX -> compare with PyTorch -> (int8: calibrate, quantise,
  compare again).
- :func:`verification_inputs`: what an export is checked (and int8 calibrated) on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .data.synthetic import sample_frames
from .options import DEFAULT_CMAP
from .runtime import compare, export_onnx, quantize_int8
from .runtime.quantize import CALIBRATION_FRAMES
from .transforms import Transforms


def verification_inputs(model_or_config, size: tuple[int, int], seed: int = 0, frames: int = 2) -> list[torch.Tensor]:
    """Normalised network inputs (1, 3, h, w) at ``size``: a random image and ``frames`` synthetic
    driving frames, through the variant's own transforms."""
    cfg = getattr(model_or_config, "config", model_or_config)
    fixed = Transforms(replace(cfg.preprocessing, input_size=tuple(size), keep_aspect=False))
    rng = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, *size, generator=rng)] + [torch.from_numpy(f) for f in sample_frames(frames, seed=seed)]
    return [fixed.preprocess(im) for im in images]


@dataclass
class ExportReport:
    path: Path
    max_abs: float
    max_rel: float
    inputs: int
    int8_path: Path | None = None
    int8_max_abs: float | None = None
    int8_max_rel: float | None = None


def int8_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.stem + "-int8.onnx")


EXPORT_FORMATS = ("onnx", "openvino")


def export_and_verify(model: torch.nn.Module, output: str | os.PathLike, size: tuple[int, int] | None = None,
                      int8: bool = False, calibration_frames: int = CALIBRATION_FRAMES, overwrite: bool = False,
                      fmt: str = "onnx") -> ExportReport:
    """Export ``model`` to ONNX (or OpenVINO IR: ``.xml`` + ``.bin``, ``fmt="openvino"``) at network
    ``size`` (default: its config's), check it against PyTorch on :func:`verification_inputs`, and
    with ``int8`` (ONNX) also write ``<stem>-int8.onnx`` (static QDQ, calibrated on
    ``calibration_frames`` synthetic driving frames) and check that too. Existing files are kept
    unless ``overwrite``."""
    from .errors import ExportError
    from .io import check_new_file

    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "openvino" and int8:
        raise ExportError("--int8 writes ONNX; for OpenVINO int8 run the model with --backend openvino --precision int8")
    outputs = [output] + ([int8_path(output)] if int8 else []) + ([Path(output).with_suffix(".bin")] if fmt == "openvino" else [])
    for path in outputs:
        check_new_file(path, overwrite)
    size = tuple(size or model.config.input_size)
    inputs = verification_inputs(model, size)
    if fmt == "openvino":
        from .runtime import OpenVinoBackend, save_ir

        path = save_ir(model, output, size)
        backend = OpenVinoBackend(None, path=path)
        with torch.no_grad():
            ref = torch.cat([model(x) for x in inputs])
        got = torch.cat([backend(x) for x in inputs])
        diff = (got - ref).abs()
        return ExportReport(path, float(diff.max()), float((diff / ref.abs().clamp_min(1e-6)).max()), len(inputs))
    path = export_onnx(model, output, size)
    err = compare(model, path, inputs)
    report = ExportReport(path, err["max_abs"], err["max_rel"], len(inputs))
    if int8:
        calib = [x.numpy() for x in verification_inputs(model, size, seed=1, frames=calibration_frames)[1:]]
        q = quantize_int8(path, int8_path(path), calibration=calib)
        qerr = compare(model, q, inputs)
        report.int8_path, report.int8_max_abs, report.int8_max_rel = q, qerr["max_abs"], qerr["max_rel"]
    return report


# -- predict over files ----------------------------------------------------------------------------------
@dataclass
class FileOutcome:
    """What happened to one input: ``written`` paths, ``kept`` (outputs that already existed), or
    ``error`` (one line)."""

    source: Path
    written: list[Path]
    kept: list[Path]
    error: str | None = None


def predict_files(predictor, files: list[Path], outdir: str | os.PathLike, formats: tuple[str, ...] = ("color",),
                  cmap: str = DEFAULT_CMAP, side_by_side: bool = True, focal: float | None = None,
                  overwrite: bool = False, on_file=None) -> list[FileOutcome]:
    """Predict each file and write its outputs under ``outdir`` (relative paths kept, see
    :func:`fastdpt.io.output_stems`). Never writes over an input; existing outputs are kept unless
    ``overwrite`` (an input whose outputs all exist is not run again). Every failure is one line in
    its outcome and the batch goes on."""
    from .io import check_formats, ensure_output_dir, output_paths, output_stems, read_image, same_file, write_outputs
    from .errors import FastDPTError

    check_formats(formats, predictor.config.output_kind, focal)
    outdir = ensure_output_dir(outdir)
    inputs = {f.resolve() for f in files}
    outcomes = []
    for src, stem in output_stems(files).items():
        planned = output_paths(stem, outdir, formats)
        clash = [p for p in planned.values() if p.resolve() in inputs or same_file(p, src)]
        if clash:
            outcome = FileOutcome(src, [], [], f"{src}: writing {clash[0]} would overwrite an input; choose another --outdir")
        else:
            todo = tuple(fmt for fmt, p in planned.items() if overwrite or not p.exists())
            kept = [p for fmt, p in planned.items() if fmt not in todo]
            outcome = FileOutcome(src, [], kept)
            if todo:
                try:
                    image = read_image(src)
                    res = predictor.predict(image)
                    Path(planned[todo[0]]).parent.mkdir(parents=True, exist_ok=True)
                    outcome.written = write_outputs(res, Path(stem).name, planned[todo[0]].parent, formats=todo,
                                                    image=image, cmap=cmap, side_by_side=side_by_side, focal=focal)
                except FastDPTError as e:
                    outcome.error = str(e) if str(src) in str(e) else f"{src}: {e}"
                except (OSError, MemoryError, RuntimeError, ValueError) as e:  # a disk, memory or backend failure
                    outcome.error = f"{src}: {type(e).__name__}: {e}"
        outcomes.append(outcome)
        if on_file:
            on_file(outcome)
    return outcomes


# -- temporal evaluation on drives --------------------------------------------------------------------------
def evaluate_temporal(predictor, entries, raw_root: str | os.PathLike, gt_root: str | os.PathLike,
                      stabilize: str = "none", max_frames: int = 100, dense_root: str | os.PathLike | None = None,
                      progress=None) -> dict:
    """Temporal stability of a model on the drives of a split: every frame of each drive folder (up to
    ``max_frames`` a drive, in order, full frames) through the predictor and the stabiliser; then

    - ``flicker``: mean flicker of the output (no ground truth needed),
    - ``tae``: the temporal alignment error with the drive's poses (OXTS files) and intrinsics
      (calibration), on static pixels (checked with the dense depth in ``dense_root`` when given, e.g.
      synthetic drives' ``dense/``, else with the sparse annotations),
    - ``abs_rel``, ``d1``: the BTS metrics of the same outputs on the annotated frames (Garg crop),
    - ``stabilize_ms``: the stabiliser's own time per frame.
    """
    import time

    import numpy as np

    from .data.kitti import dense_path, drive_poses, drive_sequences, find_gt, intrinsics_matrix, SplitEntry
    from .errors import DataError
    from .evaluation.metrics import MetricAverager, score_image
    from .evaluation.temporal import FlickerMeter, temporal_alignment_error
    from .io import IMAGE_EXTS, read_depth_png, read_image
    from .stabilize import Stabilizer

    kind = predictor.config.output_kind
    if kind != "metric":
        raise DataError(f"{predictor.config.name} predicts relative depth; the temporal alignment error needs metres")
    raw = Path(raw_root)
    avg, flick, tae_rows, stab_ms, frames_done = MetricAverager(), [], [], [], 0
    for folder in drive_sequences(entries):
        date, drive, cam = folder.split("/")
        images = sorted(p for p in (raw / folder / "data").iterdir() if p.suffix.lower() in IMAGE_EXTS)[:max_frames]
        if len(images) < 2:
            continue
        numbers = [int(p.stem) for p in images]
        try:
            poses = drive_poses(raw, f"{date}/{drive}", numbers, cam[-1])
            K = intrinsics_matrix(raw, date, cam[-1])
        except DataError:  # no OXTS or calibration: flicker and metrics only
            poses = K = None
        stab = Stabilizer(stabilize, kind)
        meter = FlickerMeter()
        depths, gts = [], []
        for i, p in enumerate(images):
            frame = read_image(p)
            depth = predictor.predict(frame).depth
            t0 = time.perf_counter()
            depth = stab(frame, depth)
            stab_ms.append((time.perf_counter() - t0) * 1000)
            meter.update(frame, depth, kind, flow=stab.pair_flow)  # the stabiliser's flow, not computed again
            depths.append(depth)
            e = SplitEntry(f"{folder}/data/{p.name}", f"{drive}/proj_depth/groundtruth/{cam}/{p.name}")
            gt_path = find_gt(gt_root, e.gt)
            sparse = read_depth_png(gt_path) if gt_path else None
            if sparse is not None:
                avg.add(score_image(depth, sparse, "garg"))
            dense = dense_path(dense_root, e) if dense_root else None
            gts.append(np.load(dense) if dense is not None and dense.is_file() else
                       (sparse if sparse is not None else np.zeros_like(depth)))
            frames_done += 1
            if progress:
                progress(frames_done)
        flick.append(meter.score)
        if poses is not None:
            tae_rows.append(temporal_alignment_error(depths, K, poses, gts))
    if not flick:
        raise DataError("no drive with two or more frames in the split's folders")
    metrics = avg.result()
    weights = [r["pixels"] for r in tae_rows]
    return {"stabilize": stabilize, "flicker": float(np.nanmean(flick)),
            "tae": float(np.average([r["tae"] for r in tae_rows], weights=weights)) if sum(weights) else float("nan"),
            "abs_rel": metrics["abs_rel"], "d1": metrics["d1"], "annotated": avg.count, "frames": frames_done,
            "drives": len(flick), "stabilize_ms": float(np.median(stab_ms)) if stab_ms else 0.0}
