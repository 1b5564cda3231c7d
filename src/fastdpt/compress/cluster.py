"""Weight clustering (palettisation): every large weight tensor takes at most K shared values.

Each Linear / Conv2d weight of at least ``MIN_NUMEL`` values is clustered on its own with
scikit-learn's k-means (1-D, fitted on up to ``FIT_SAMPLE`` of its values, then every value takes its
nearest centre). Norms, biases, embeddings and small tensors stay as they are.

What it buys is stored size, not speed: a clustered tensor can be stored as ``ceil(log2 K)``-bit
indices plus K float32 centres (:func:`palettised_bytes`); the file fastdpt writes keeps float32
tensors (every runtime here reads those), and no CPU runtime here (torch, ONNX Runtime, OpenVINO)
runs a palettised layer faster than a dense one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..errors import CompressError, ConfigError

MIN_NUMEL = 4096
FIT_SAMPLE = 65536
MAX_K = 65536


def clustered_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights clustering touches: name -> tensor."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)) and m.weight.numel() >= MIN_NUMEL:
            out[f"{name}.weight"] = m.weight
    return out


def cluster(model: nn.Module, k: int, seed: int = 0) -> dict:
    """Cluster every large weight of ``model`` in place to at most ``k`` values; returns a summary
    (tensors, values clustered, stored bytes before and as palettised indices + centres)."""
    if not (isinstance(k, int) and 2 <= k <= MAX_K):
        raise ConfigError(f"--cluster K must be an integer in [2, {MAX_K}], got {k!r}")
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        raise CompressError("weight clustering needs scikit-learn: pip install -e '.[compress]'") from None
    rng = np.random.default_rng(seed)
    tensors = clustered_tensors(model)
    values = 0
    for name, w in tensors.items():
        flat = w.detach().float().cpu().numpy().reshape(-1, 1)
        fit = flat if len(flat) <= FIT_SAMPLE else flat[rng.choice(len(flat), FIT_SAMPLE, replace=False)]
        n_clusters = min(k, len(np.unique(fit)))
        km = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit(fit)
        centres = km.cluster_centers_.astype(np.float32)
        idx = km.predict(flat)
        with torch.no_grad():
            w.copy_(torch.from_numpy(centres[idx, 0].reshape(tuple(w.shape))).to(w.dtype))
        values += flat.size
    dense = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    return {"k": k, "tensors": len(tensors), "values": values, "dense_bytes": dense,
            "palettised_bytes": palettised_bytes(model, k)}


def palettised_bytes(model: nn.Module, k: int) -> int:
    """Bytes of the state dict with every clustered tensor stored as bit-packed indices + K float32 centres."""
    clustered = {id(t) for t in clustered_tensors(model).values()}
    bits = max(1, math.ceil(math.log2(k)))
    total = 0
    for p in model.state_dict(keep_vars=True).values():
        if id(p) in clustered:
            total += math.ceil(p.numel() * bits / 8) + 4 * k
        else:
            total += p.numel() * p.element_size()
    return total
