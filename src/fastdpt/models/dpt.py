"""The DPT-Hybrid family: hybrid encoder -> reassemble -> RefineNet fusion decoder -> depth head.

Everything a forward pass needs lives in local variables: no hook dictionaries, no global state,
so any number of models can run in one process or across threads.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from ..config import ATTENTIONS, EMBED_DIM, ModelConfig
from ..errors import ImageError
from .attention import Attention
from .backbones import build_backbone

POS_GRID = 24  # the stored position embedding is a 24 x 24 grid (+ cls), from 384 x 384 pre-training


class HybridEncoder(nn.Module):
    """CNN stem -> 1/16 tokens (+cls, resized position embedding) -> ``config.num_blocks`` ViT-B blocks.

    Returns the two conv hooks and the token sequences after the two transformer hook blocks.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.hooks = config.hooks
        self.cnn = build_backbone(config.backbone)
        c = self.cnn.last_channels
        if self.cnn.last_stride == 16:
            self.proj = nn.Conv2d(c, EMBED_DIM, kernel_size=1)
        else:  # 1/32 -> 1/16
            self.proj = nn.ConvTranspose2d(c, EMBED_DIM, kernel_size=2, stride=2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, EMBED_DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, POS_GRID * POS_GRID + 1, EMBED_DIM))
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList()
        for i in range(config.num_blocks):
            blk = Block(EMBED_DIM, config.heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm)
            blk.attn = Attention(
                EMBED_DIM, config.heads, kernel=config.attention,
                nb_features=config.num_features if ATTENTIONS[config.attention].takes_features else None, seed=i,
            )
            self.blocks.append(blk)

    def resized_pos_embed(self, h: int, w: int) -> torch.Tensor:
        cls_pos, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        if (h, w) != (POS_GRID, POS_GRID):
            grid = grid.reshape(1, POS_GRID, POS_GRID, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
            grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([cls_pos, grid], dim=1)

    def forward(self, x: torch.Tensor):
        f1, f2, last = self.cnn(x)
        t = self.proj(last)
        b, _, h, w = t.shape
        t = t.flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1) + self.resized_pos_embed(h, w)
        outs = []
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i in self.hooks:
                outs.append(t)
        return f1, f2, outs[0], outs[1], (h, w)


class Reassemble(nn.Module):
    """"project" readout: [patch, cls] -> Linear(2D, D) -> GELU -> map -> 1x1 conv (-> 3x3/2 conv)."""

    def __init__(self, downsample: bool) -> None:
        super().__init__()
        self.readout = nn.Linear(2 * EMBED_DIM, EMBED_DIM)
        self.proj = nn.Conv2d(EMBED_DIM, EMBED_DIM, kernel_size=1)
        self.down = nn.Conv2d(EMBED_DIM, EMBED_DIM, kernel_size=3, stride=2, padding=1) if downsample else None

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        patch = tokens[:, 1:]
        cls = tokens[:, :1].expand_as(patch)
        x = F.gelu(self.readout(torch.cat([patch, cls], dim=-1)))
        x = x.transpose(1, 2).unflatten(2, grid)
        x = self.proj(x)
        return self.down(x) if self.down is not None else x


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """RefineNet-style fusion: out = x (+ RCU1(skip)) -> RCU2 -> bilinear x2 -> 1x1 conv."""

    def __init__(self, features: int, has_skip: bool = True) -> None:
        super().__init__()
        self.rcu1 = ResidualConvUnit(features) if has_skip else None
        self.rcu2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.rcu1(skip)
        x = self.rcu2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Decoder(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int, int], features: int) -> None:
        super().__init__()
        self.layer_rn = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in in_channels)
        # fusion[i] is the official refinenet{i+1}; refinenet4 never gets a skip input
        self.fusion = nn.ModuleList(FusionBlock(features, has_skip=i < 3) for i in range(4))

    def forward(self, l1, l2, l3, l4) -> torch.Tensor:
        r1, r2, r3, r4 = (conv(x) for conv, x in zip(self.layer_rn, (l1, l2, l3, l4)))
        path = self.fusion[3](r4)
        path = self.fusion[2](path, r3)
        path = self.fusion[1](path, r2)
        return self.fusion[0](path, r1)


class DPT(nn.Module):
    """A DPT-Hybrid variant. ``forward`` takes normalised images (B, 3, H, W) with H, W multiples
    of 32 and returns (B, H, W): relative inverse depth, or metres for a metric config."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = HybridEncoder(config)
        self.reassemble = nn.ModuleList([Reassemble(downsample=False), Reassemble(downsample=True)])
        c1, c2 = self.encoder.cnn.channels
        f = config.features
        self.decoder = Decoder((c1, c2, EMBED_DIM, EMBED_DIM), f)
        self.head = nn.Sequential(
            nn.Conv2d(f, f // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(f // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ImageError(f"network input height and width must be multiples of 32, got {tuple(x.shape[-2:])}")
        f1, f2, t3, t4, grid = self.encoder(x)
        y = self.decoder(f1, f2, self.reassemble[0](t3, grid), self.reassemble[1](t4, grid))
        y = self.head(y).squeeze(1)
        if self.config.metric is not None:  # in float32 whatever the weights' precision
            y = y.float()
            scale, shift = self.config.metric
            y = 1.0 / torch.clamp(scale * y + shift, min=1e-8)
        return y
