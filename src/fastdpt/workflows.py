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
from .runtime import compare, export_onnx, quantize_int8
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


def export_and_verify(model: torch.nn.Module, output: str | os.PathLike, size: tuple[int, int] | None = None,
                      int8: bool = False, calibration_frames: int = 8, overwrite: bool = False) -> ExportReport:
    """Export ``model`` to ONNX at network ``size`` (default: its config's), check it against PyTorch
    on :func:`verification_inputs`, and with ``int8`` also write ``<stem>-int8.onnx`` (static QDQ,
    calibrated on ``calibration_frames`` synthetic driving frames) and check that too. Existing
    files are kept unless ``overwrite``."""
    from .io import check_new_file

    for path in [output] + ([int8_path(output)] if int8 else []):
        check_new_file(path, overwrite)
    size = tuple(size or model.config.input_size)
    path = export_onnx(model, output, size)
    inputs = verification_inputs(model, size)
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
                  cmap: str = "Spectral_r", side_by_side: bool = True, focal: float | None = None,
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
