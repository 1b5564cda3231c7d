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


def export_and_verify(model: torch.nn.Module, output: str | os.PathLike, size: tuple[int, int] | None = None,
                      int8: bool = False, calibration_frames: int = 8) -> ExportReport:
    """Export ``model`` to ONNX at network ``size`` (default: its config's), check it against PyTorch
    on :func:`verification_inputs`, and with ``int8`` also write ``<stem>-int8.onnx`` (static QDQ,
    calibrated on ``calibration_frames`` synthetic driving frames) and check that too."""
    size = tuple(size or model.config.input_size)
    path = export_onnx(model, output, size)
    inputs = verification_inputs(model, size)
    err = compare(model, path, inputs)
    report = ExportReport(path, err["max_abs"], err["max_rel"], len(inputs))
    if int8:
        calib = [x.numpy() for x in verification_inputs(model, size, seed=1, frames=calibration_frames)[1:]]
        q = quantize_int8(path, path.with_name(path.stem + "-int8.onnx"), calibration=calib)
        qerr = compare(model, q, inputs)
        report.int8_path, report.int8_max_abs, report.int8_max_rel = q, qerr["max_abs"], qerr["max_rel"]
    return report
