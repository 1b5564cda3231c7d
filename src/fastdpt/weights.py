"""Weights: official and Hugging Face key layouts, strict loading, warm start with a report, and our
safetensors checkpoints (downloads live in :mod:`fastdpt.hub`).

Untrusted files are never unpickled: ``.pt``/``.pth``/``.bin`` go through
``torch.load(weights_only=True)``, our own checkpoints are safetensors.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .config import CONFIG_KEY, FINGERPRINT_KEY, ModelConfig, fingerprint
from .io import atomic_write
from .errors import WeightsError, WeightsNotFoundError
from .models.structure import STRUCTURE_KEY, dump_structure, parse_structure, structure_of

StateDict = dict[str, torch.Tensor]

# -- reading files ---------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Tensors of a weight file: safetensors, or a torch pickle read with ``weights_only=True``.

    Accepts a flat dict or one nested under ``model`` / ``state_dict``; strips a DDP ``module.``
    prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    try:
        if _is_safetensors(path):
            sd = load_file(str(path))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # pickle-protocol notes from the safe unpickler
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(obj, Mapping) and not _all_tensors(obj):
                obj = obj.get("model", obj.get("state_dict", obj))
            if not isinstance(obj, Mapping) or not _all_tensors(obj):
                raise WeightsError(f"{path}: not a state dict of tensors (found {type(obj).__name__})")
            sd = dict(obj)
    except WeightsError:
        raise
    except (SafetensorError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError,
            pickle.UnpicklingError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in str(e):
            msg = "it contains pickled objects other than tensors, which fastdpt refuses to unpickle"
        raise WeightsError(f"cannot read weights from {path}: {msg}") from None
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _all_tensors(d: Mapping) -> bool:
    return len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


# -- key layouts -----------------------------------------------------------------------------------
# official -> fastdpt; applied in order, first match wins
_OFFICIAL_RULES: list[tuple[re.Pattern, str | Callable[[re.Match], str]]] = [
    (re.compile(r"^pretrained\.model\.patch_embed\.backbone\."), "encoder.cnn.model."),
    (re.compile(r"^pretrained\.model\.patch_embed\.proj\."), "encoder.proj."),
    (re.compile(r"^pretrained\.model\.(cls_token|pos_embed)$"), r"encoder.\1"),
    (re.compile(r"^pretrained\.model\.blocks\."), "encoder.blocks."),
    (re.compile(r"^pretrained\.act_postprocess([34])\.0\.project\.0\."), lambda m: f"reassemble.{int(m[1]) - 3}.readout."),
    (re.compile(r"^pretrained\.act_postprocess([34])\.3\."), lambda m: f"reassemble.{int(m[1]) - 3}.proj."),
    (re.compile(r"^pretrained\.act_postprocess4\.4\."), "reassemble.1.down."),
    (re.compile(r"^scratch\.layer([1-4])_rn\."), lambda m: f"decoder.layer_rn.{int(m[1]) - 1}."),
    (re.compile(r"^scratch\.refinenet([1-4])\.resConfUnit([12])\."), lambda m: f"decoder.fusion.{int(m[1]) - 1}.rcu{m[2]}."),
    (re.compile(r"^scratch\.refinenet([1-4])\.out_conv\."), lambda m: f"decoder.fusion.{int(m[1]) - 1}.out_conv."),
    (re.compile(r"^scratch\.output_conv\."), "head."),
]
# official keys that are never used for depth: ImageNet classifier, final norm, refinenet4's RCU1
OFFICIAL_UNUSED = re.compile(r"^(pretrained\.model\.(head|norm)\.|scratch\.refinenet4\.resConfUnit1\.)")

_HF_RULES: list[tuple[re.Pattern, str | Callable[[re.Match], str]]] = [
    (re.compile(r"^dpt\.embeddings\.cls_token$"), "pretrained.model.cls_token"),
    (re.compile(r"^dpt\.embeddings\.position_embeddings$"), "pretrained.model.pos_embed"),
    (re.compile(r"^dpt\.embeddings\.backbone\.bit\.embedder\.convolution\."), "pretrained.model.patch_embed.backbone.stem.conv."),
    (re.compile(r"^dpt\.embeddings\.backbone\.bit\.embedder\.norm\."), "pretrained.model.patch_embed.backbone.stem.norm."),
    (re.compile(r"^dpt\.embeddings\.backbone\.bit\.encoder\.stages\.(\d+)\.layers\.(\d+)\."),
     r"pretrained.model.patch_embed.backbone.stages.\1.blocks.\2."),
    (re.compile(r"^dpt\.embeddings\.projection\."), "pretrained.model.patch_embed.proj."),
    (re.compile(r"^dpt\.encoder\.layer\.(\d+)\.layernorm_before\."), r"pretrained.model.blocks.\1.norm1."),
    (re.compile(r"^dpt\.encoder\.layer\.(\d+)\.layernorm_after\."), r"pretrained.model.blocks.\1.norm2."),
    (re.compile(r"^dpt\.encoder\.layer\.(\d+)\.attention\.output\.dense\."), r"pretrained.model.blocks.\1.attn.proj."),
    (re.compile(r"^dpt\.encoder\.layer\.(\d+)\.intermediate\.dense\."), r"pretrained.model.blocks.\1.mlp.fc1."),
    (re.compile(r"^dpt\.encoder\.layer\.(\d+)\.output\.dense\."), r"pretrained.model.blocks.\1.mlp.fc2."),
    (re.compile(r"^dpt\.layernorm\."), "pretrained.model.norm."),
    (re.compile(r"^neck\.reassemble_stage\.readout_projects\.([23])\.0\."), lambda m: f"pretrained.act_postprocess{int(m[1]) + 1}.0.project.0."),
    (re.compile(r"^neck\.reassemble_stage\.layers\.([23])\.projection\."), lambda m: f"pretrained.act_postprocess{int(m[1]) + 1}.3."),
    (re.compile(r"^neck\.reassemble_stage\.layers\.3\.resize\."), "pretrained.act_postprocess4.4."),
    (re.compile(r"^neck\.convs\.([0-3])\."), lambda m: f"scratch.layer{int(m[1]) + 1}_rn."),
    (re.compile(r"^neck\.fusion_stage\.layers\.([0-3])\.projection\."), lambda m: f"scratch.refinenet{4 - int(m[1])}.out_conv."),
    (re.compile(r"^neck\.fusion_stage\.layers\.([0-3])\.residual_layer([12])\.convolution([12])\."),
     lambda m: f"scratch.refinenet{4 - int(m[1])}.resConfUnit{m[2]}.conv{m[3]}."),
    (re.compile(r"^head\.head\."), "scratch.output_conv."),
]
_HF_QKV = re.compile(r"^dpt\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def _rename(key: str, rules) -> str | None:
    for pat, rep in rules:
        m = pat.match(key)
        if m:
            new = rep(m) if callable(rep) else m.expand(rep)
            return new + key[m.end():]
    return None


def hf_to_official(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Hugging Face ``DPTForDepthEstimation`` (hybrid) keys -> official DPT keys (q, k, v fused)."""
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for k, v in sd.items():
        m = _HF_QKV.match(k)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = v
            continue
        new = _rename(k, _HF_RULES)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise WeightsError(f"layer {layer}: incomplete query/key/value {kind} in the Hugging Face weights")
        out[f"pretrained.model.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    if unknown:
        raise WeightsError(f"unknown Hugging Face DPT keys: {_summarize(unknown)}")
    return out


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    keys = list(sd)
    if any(k.startswith("pretrained.") or k.startswith("scratch.") for k in keys):
        return "official"
    if any(k.startswith("dpt.") or k.startswith("neck.") for k in keys):
        return "hf"
    if any(k.startswith("encoder.") for k in keys):
        return "fastdpt"
    raise WeightsError("unrecognised weight layout (neither official DPT, Hugging Face DPT, nor fastdpt); "
                       f"first keys: {keys[:3]}")


def to_fastdpt_keys(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """Any supported layout -> fastdpt keys. Returns (state dict, keys ignored as unused by design)."""
    layout = detect_layout(sd)
    if layout == "fastdpt":
        return dict(sd), []
    if layout == "hf":
        sd = hf_to_official(sd)
    out: StateDict = {}
    ignored, unknown = [], []
    for k, v in sd.items():
        if OFFICIAL_UNUSED.match(k):
            ignored.append(k)
            continue
        new = _rename(k, _OFFICIAL_RULES)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise WeightsError(f"keys not in the official DPT layout: {_summarize(unknown)}")
    return out, ignored


# -- loading into a model ---------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What a weight load did: ``loaded`` into the model, ``ignored`` (unused by design or pruned),
    ``new`` (the model's tensors the file did not provide), ``mismatched`` (name fits, shape not)."""

    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors, ignored {len(self.ignored)}, "
                 f"newly initialised {len(self.new)}, shape mismatch {len(self.mismatched)}"]
        for label, keys in (("ignored", self.ignored), ("new", self.new), ("shape mismatch", self.mismatched)):
            if keys:
                lines.append(f"  {label}: {_summarize(keys)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _summarize(keys: list[str], limit: int = 8) -> str:
    """Group keys by module (numbers folded to ranges) so that a report fits on a line."""
    groups: Counter = Counter()
    for k in keys:
        parts = k.split(".")
        groups[".".join(parts[:3]) if len(parts) > 3 else k] += 1
    items = [f"{g} ({n})" if n > 1 else g for g, n in sorted(groups.items())]
    more = f", ... {len(items) - limit} more groups" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _pruned(key: str, model: nn.Module) -> bool:
    m = re.match(r"^encoder\.blocks\.(\d+)\.", key)
    return bool(m) and int(m[1]) >= len(model.encoder.blocks)


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> LoadReport:
    """Load weights key-for-key (official, Hugging Face or fastdpt layout). Anything missing, extra or
    of the wrong shape is a :class:`WeightsError` that lists the keys."""
    sd, ignored = to_fastdpt_keys(read_state_dict(source) if not isinstance(source, Mapping) else source)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    bad = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or extra or bad:
        name = getattr(getattr(model, "config", None), "name", "this model")
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_summarize(missing)}")
        if extra:
            parts.append(f"unexpected {len(extra)}: {_summarize(extra)}")
        if bad:
            parts.append(f"shape mismatch {len(bad)}: {'; '.join(bad[:4])}")
        raise WeightsError(f"weights do not fit {name}: " + " | ".join(parts)
                           + ". For a modified variant, warm-start it instead (fastdpt.warm_start / --init).")
    model.load_state_dict(sd, strict=True)
    return LoadReport(loaded=list(own), ignored=ignored)


def warm_start(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor],
               backbone_weights: str | os.PathLike | None = None) -> LoadReport:
    """Load every tensor whose name and shape fit; report what was ignored, new or mismatched.

    ``backbone_weights``: a timm checkpoint of the CNN (e.g. EfficientNet-B0 ImageNet weights) used
    for the CNN tensors the DPT file could not provide; ``"hub"`` fetches it through timm (online).
    """
    sd, ignored = to_fastdpt_keys(read_state_dict(source) if not isinstance(source, Mapping) else source)
    own = model.state_dict()
    report = LoadReport(ignored=ignored)
    take: StateDict = {}
    for k, v in sd.items():
        if k not in own:
            report.ignored.append(k)
        elif v.shape != own[k].shape:
            report.mismatched.append(k)
        else:
            take[k] = v
    model.load_state_dict(take, strict=False)
    report.loaded = list(take)
    report.new = [k for k in own if k not in take]
    pruned = sum(_pruned(k, model) for k in sd)
    if pruned:
        report.notes.append(f"{pruned} tensors of pruned blocks {len(model.encoder.blocks)}+ dropped")
    cnn_new = [k for k in report.new if k.startswith("encoder.cnn.model.")]
    if cnn_new:
        report.notes.append(_init_backbone(model, backbone_weights, cnn_new))
    return report


def _init_backbone(model: nn.Module, backbone_weights, cnn_new: list[str]) -> str:
    cnn = model.encoder.cnn
    name = cnn.timm_name
    if backbone_weights is None:
        return (f"{len(cnn_new)} CNN tensors have no DPT weights and no ImageNet weights were given: "
                f"randomly initialised (pass backbone_weights=PATH to a timm {name} checkpoint, or 'hub' when online)")
    if str(backbone_weights) == "hub":
        try:
            import timm

            src = timm.create_model(name, pretrained=True, num_classes=0, global_pool="").state_dict()
        except Exception as e:  # noqa: BLE001 - offline, hub errors
            return f"could not fetch ImageNet weights for {name} from the hub ({type(e).__name__}): randomly initialised"
    else:
        src = read_state_dict(backbone_weights)
    own = cnn.model.state_dict()
    take = {k: v for k, v in src.items() if k in own and v.shape == own[k].shape
            and f"encoder.cnn.model.{k}" in cnn_new}
    if not take:
        raise WeightsError(f"{backbone_weights}: no tensor fits the {name} backbone")
    cnn.model.load_state_dict(take, strict=False)
    return f"{len(take)} of {len(cnn_new)} new CNN tensors from ImageNet weights ({backbone_weights})"


# -- our checkpoints --------------------------------------------------------------------------------


def save_checkpoint(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a safetensors file whose metadata carries the variant's canonical name.

    Written to a temporary file in the same folder and renamed, so a crash never leaves half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update({CONFIG_KEY: model.config.name, FINGERPRINT_KEY: fingerprint(model.config.name), "format": "pt"})
    meta.pop(STRUCTURE_KEY, None)
    if structure := structure_of(model):  # a pruned model: its shapes beside its name
        meta[STRUCTURE_KEY] = dump_structure(structure)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def _metadata(path: Path) -> dict | None:
    if not path.is_file() or not _is_safetensors(path):
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"cannot read {path}: {e}") from None


def read_checkpoint_structure(path: str | os.PathLike) -> dict:
    """The pruned structure a fastdpt checkpoint carries (:mod:`fastdpt.models.structure`); ``{}`` for
    an unpruned model or another kind of file."""
    meta = _metadata(Path(path))
    return parse_structure((meta or {}).get(STRUCTURE_KEY), str(path))


def read_checkpoint_config(path: str | os.PathLike) -> ModelConfig | None:
    """The config stored in a fastdpt safetensors checkpoint, or None for other files."""
    path = Path(path)
    meta = _metadata(path)
    if meta is None:
        return None
    name = meta.get(CONFIG_KEY)
    if not name:
        return None
    stamp = meta.get(FINGERPRINT_KEY)  # files saved before fingerprints existed have none
    if stamp is not None and stamp != fingerprint(name):
        raise WeightsError(f"{path}: its metadata names {name!r}, but the file was saved as another variant "
                           "(config fingerprint mismatch: the metadata was edited); load it as the variant it was "
                           "trained as, or re-save it")
    return ModelConfig.from_name(name)

