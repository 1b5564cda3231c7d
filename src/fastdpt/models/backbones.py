"""Convolutional stems of the hybrid encoder, built from timm.

Each returns ``(hook1, hook2, last)``: the two conv hooks the decoder reads (1/4 and 1/8) and the
map that becomes the transformer tokens (``last_channels`` at ``last_stride``).
"""

from __future__ import annotations

from functools import partial

import timm
import torch
from timm.layers import StdConv2dSame
from timm.models.resnetv2 import ResNetV2
from torch import nn


class ResNetHybrid(nn.Module):
    """The ViT-Hybrid ResNetV2-50 stem (timm ``vit_base_r50_s16_384``'s backbone): stages 3, 4, 9,
    non-pre-activation bottlenecks, StdConv2dSame (eps 1e-8), GroupNorm(32)."""

    channels = (256, 512)
    last_channels = 1024
    last_stride = 16
    timm_name = "vit_base_r50_s16_384"

    def __init__(self) -> None:
        super().__init__()
        self.model = ResNetV2(
            layers=(3, 4, 9), num_classes=0, global_pool="", preact=False, stem_type="same",
            conv_layer=partial(StdConv2dSame, eps=1e-8),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.model.stem(x)
        f1 = self.model.stages[0](x)
        f2 = self.model.stages[1](f1)
        return f1, f2, self.model.stages[2](f2)


class EfficientNetB0(nn.Module):
    """timm ``efficientnet_b0``: hooks are block groups 1 (24 ch, 1/4) and 2 (40 ch, 1/8); the last
    map is ``conv_head``'s 1280 channels at 1/32, as in the reference study."""

    channels = (24, 40)
    last_channels = 1280
    last_stride = 32
    timm_name = "efficientnet_b0"

    def __init__(self) -> None:
        super().__init__()
        self.model = timm.create_model(self.timm_name, num_classes=0, global_pool="")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        x = m.bn1(m.conv_stem(x))
        x = m.blocks[0](x)
        f1 = m.blocks[1](x)
        f2 = m.blocks[2](f1)
        x = f2
        for blk in m.blocks[3:]:
            x = blk(x)
        return f1, f2, m.bn2(m.conv_head(x))


class TimmCNN(nn.Module):
    """Any timm CNN through its ``features_only`` interface (the backbone axis of a study, beyond the
    reference study's two): hooks are its feature maps at strides 4 and 8, tokens come from its last
    feature map (stride 16: a 1x1 projection; stride 32: ConvTranspose2d to 1/16, as EfficientNet-B0)."""

    def __init__(self, timm_name: str) -> None:
        super().__init__()
        from ..errors import ConfigError

        self.timm_name = timm_name
        self.model = timm.create_model(timm_name, features_only=True, pretrained=False)
        reductions = list(self.model.feature_info.reduction())
        channels = list(self.model.feature_info.channels())
        if 4 not in reductions or 8 not in reductions or reductions[-1] not in (16, 32):
            raise ConfigError(f"timm model {timm_name!r} has feature strides {reductions}: a DPT backbone needs "
                              "maps at strides 4 and 8 and a last one at 16 or 32")
        self.picks = (reductions.index(4), reductions.index(8), len(reductions) - 1)
        self.channels = (channels[self.picks[0]], channels[self.picks[1]])
        self.last_channels = channels[-1]
        self.last_stride = reductions[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.model(x)
        return feats[self.picks[0]], feats[self.picks[1]], feats[self.picks[2]]


BACKBONE_CLASSES = {"r50": ResNetHybrid, "effb0": EfficientNetB0}
TIMM_PREFIX = "timm-"


def build_backbone(name: str) -> nn.Module:
    if name.startswith(TIMM_PREFIX):
        return TimmCNN(name[len(TIMM_PREFIX):])
    return BACKBONE_CLASSES[name]()
