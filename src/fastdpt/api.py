"""Building and loading models: the library entry points behind every command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from .config import ModelConfig
from .errors import WeightsError, WeightsNotFoundError
from .hub import resolve_weights
from .models import DPT
from .models.structure import apply_structure
from .presets import PRESETS, get_config, preset_with_weights
from .weights import LoadReport, load_weights, read_checkpoint_config, read_checkpoint_structure, warm_start


def create_model(name_or_config: str | ModelConfig, init: str | os.PathLike | None = None,
                 backbone_weights: str | os.PathLike | None = None) -> DPT:
    """Build a variant. Untrained unless ``init`` names weights to warm-start from (official,
    Hugging Face or fastdpt layout); the warm-start report is at ``model.load_report``."""
    model = DPT(get_config(name_or_config))
    model.load_report = warm_start(model, init, backbone_weights) if init is not None else None
    return model


def load(name_or_path: str | os.PathLike, weights: str | os.PathLike | None = None, *,
         device: str | torch.device = "cpu", cache: str | os.PathLike | None = None,
         allow_download: bool = True, progress: Callable[[int, int], None] | None = None) -> DPT:
    """A model with trained weights, ready for inference (``eval()``), never random.

    ``name_or_path``: a fastdpt checkpoint (its metadata gives the variant), a preset (official
    weights from ``weights``, the cache, or a download) or a canonical name with ``weights``.
    The weights must fit key-for-key; see :func:`create_model` to warm-start a modified variant.
    """
    path = Path(name_or_path)
    cfg = read_checkpoint_config(path) if path.suffix == ".safetensors" or path.is_file() else None
    if cfg is not None:
        if weights is not None:
            raise WeightsNotFoundError(f"{path} already holds weights; do not pass weights= as well")
        weights = path
    elif path.suffix == ".safetensors" and not path.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {path}")
    elif path.is_file():
        raise WeightsError(f"{path} carries no fastdpt config (an official or Hugging Face file?): "
                           "name the variant and pass the file as weights, e.g. --model dpt-hybrid-kitti --weights FILE")
    else:
        cfg = get_config(str(name_or_path))
        preset = str(name_or_path) if str(name_or_path) in PRESETS else preset_with_weights(cfg)
        stored = read_checkpoint_config(weights) if weights is not None else None
        if stored is not None and stored != cfg:
            what = f"{weights} holds {stored.name}, not {cfg.name}"
            try:  # say which tensors differ too, when they do
                load_weights(DPT(cfg), weights)
            except WeightsError as e:
                raise WeightsError(f"{what}; {e}") from None
            raise WeightsError(f"{what}: leave out the model name to run the checkpoint's own variant, or "
                               "warm-start the other variant from it (--init)")
        if weights is None:
            if preset is None:
                raise WeightsNotFoundError(
                    f"{cfg.name} has no published weights: pass weights=PATH (a checkpoint trained for it)")
            weights = resolve_weights(preset, cache=cache, allow_download=allow_download, progress=progress)
    model = apply_structure(DPT(cfg), read_checkpoint_structure(weights), str(weights))  # pruned shapes, if any
    model.load_report: LoadReport = load_weights(model, weights)
    model.weights_path = str(weights)
    return model.to(device).eval()

