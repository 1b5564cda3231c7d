"""Exported files (``.onnx`` from ``fastdpt export``, ``.xml`` OpenVINO IR): the variant they were made
from, the backend that runs them, and the checks made when they are opened rather than on every frame."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..config import EXPORTED_SUFFIXES, ModelConfig
from ..errors import ConfigError
from .backends import REGISTRY, Backend, available_backends, readers
from .openvino import ir_config, ir_quantised  # (importing it registers the openvino backend)
from .options import AUTO, RuntimeOptions

SUFFIXES = EXPORTED_SUFFIXES


def is_exported(path: str | os.PathLike | None) -> bool:
    return path is not None and str(path).endswith(SUFFIXES)




def exported_options(path: str | os.PathLike, options: RuntimeOptions) -> RuntimeOptions:
    """``auto`` for an exported file: OpenVINO where it is installed (always for ``.xml``), else ONNX
    Runtime; the precision the file was exported in (fp32; an int8 file is already quantised). A
    backend that cannot read the file is refused."""
    path = str(path)
    if options.backend == AUTO:  # the most preferred reader installed here (else the first: it says what is missing)
        have = available_backends(options.device)
        options = replace(options, backend=next((b for b in readers(path) if b in have), readers(path)[0]))
    if options.precision == AUTO:
        options = replace(options, precision="fp32")
    if options.backend not in readers(path):
        raise ConfigError(f"{Path(path).name} runs with backend " + " or ".join(f"'{b}'" for b in readers(path)))
    if options.precision == "int8" and not ir_quantised(path):  # it would run in float under an int8 label
        raise ConfigError(f"{Path(path).name} is a float model: it runs as exported (--precision fp32"
                          + (" or bf16" if options.backend == "openvino" else "") + "); for int8 run the checkpoint with "
                          "--precision int8, or export an int8 file (fastdpt export --int8, fastdpt compress --qat)")
    return options


def open_exported(path: str | os.PathLike, options: RuntimeOptions) -> tuple[ModelConfig, Backend]:
    """The variant and a backend for an exported file (``options`` already resolved by
    :func:`exported_options`). A graph whose fixed input size is not the one its metadata's variant
    preprocesses to is refused here, not by skipping every frame later."""
    cfg = ir_config(path)
    if Path(path).suffix == ".onnx":
        from .export import check_weights

        check_weights(path)
    cls = REGISTRY[options.backend]
    if (lack := cls.missing(options.device)) is not None:
        raise ConfigError(f"{Path(path).name} runs with the {cls.name} backend, which needs {lack}")
    backend = cls.open(path, options)
    if not cfg.keep_aspect and backend.fixed_size is not None and backend.fixed_size != tuple(cfg.input_size):
        h, w = backend.fixed_size
        raise ConfigError(f"{Path(path).name}: its graph takes {h}x{w} input but its metadata names {cfg.name}, which "
                          f"preprocesses to {cfg.input_size[0]}x{cfg.input_size[1]}: the file or its metadata was "
                          "changed; export it again with `fastdpt export`")
    return cfg, backend
