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


BACKBONE_CLASSES = {"r50": ResNetHybrid, "effb0": EfficientNetB0}


def build_backbone(name: str) -> nn.Module:
    return BACKBONE_CLASSES[name]()
