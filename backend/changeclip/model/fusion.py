"""Bitemporal "differential features compensation" fusion (spec §1.2).

At each pyramid level i, with per-date features A_i, B_i (score maps included at one level) and
the FPN output p_i of [A_i || B_i]:

* m_i = ReLU(conv1x1(|A_i - B_i|)) -- the official ``minus_conv[i]``;
* w_i = sigmoid(1 - cos(A_i, B_i)) over channels, (B, 1, h, w);
* e_i = SE([p_i * w_i, m_i, p_i]) -- the official ``channel_att[i]`` (:class:`SELayerV2`).

The modules are attributes of the parent network (keys ``minus_conv.*``, ``channel_att.*``);
this file holds the SE layer, the constructors and the fusion arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from changeclip.model.config import ChangeCLIPConfig
from changeclip.model.layers import ConvAct


class SELayerV2(nn.Module):
    """Squeeze-and-excitation gate followed by a projection (the official ``SELayer_v2``).

    global average pool -> conv1x1 + ReLU -> conv1x1 + HSigmoid -> x * gate -> conv1x1 + ReLU.

    Args:
        channels: Input channels (768 officially).
        out_channels: Output channels (256 officially).
        hidden_channels: Width of the squeeze (48 officially).
    """

    def __init__(self, channels: int, out_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = ConvAct(channels, hidden_channels, 1, act="relu")
        self.conv2 = ConvAct(hidden_channels, channels, 1, act="hsigmoid")
        self.conv_last = ConvAct(channels, out_channels, 1, act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, channels, h, w) -> (B, out_channels, h, w)."""
        gate = self.conv2(self.conv1(self.global_avgpool(x)))
        return self.conv_last(x * gate)


def build_minus_convs(cfg: ChangeCLIPConfig) -> nn.Sequential:
    """The four |A-B| projections: conv1x1(time_channels[i] -> fusion_channels) + ReLU."""
    return nn.Sequential(*[ConvAct(c, cfg.fusion_channels, 1, act="relu") for c in cfg.time_channels])


def build_channel_att(cfg: ChangeCLIPConfig) -> nn.Sequential:
    """The four SE fusions: SELayerV2(se_in_channels -> fusion_channels)."""
    return nn.Sequential(
        *[SELayerV2(cfg.se_in_channels, cfg.fusion_channels, cfg.se_hidden_channels) for _ in range(4)]
    )


def change_weight(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w = sigmoid(1 - cosine_similarity(a, b)) over channels.

    Args:
        a: Date-A features (B, C, h, w).
        b: Date-B features (B, C, h, w).

    Returns:
        (B, 1, h, w), values in [sigmoid(0), sigmoid(2)] = [0.5, 0.881].
    """
    return torch.sigmoid(1 - torch.cosine_similarity(a, b, dim=1)).unsqueeze(1)


def fuse_levels(
    feats_a: Sequence[torch.Tensor],
    feats_b: Sequence[torch.Tensor],
    neck_out: Sequence[torch.Tensor],
    minus_conv: nn.Sequential,
    channel_att: nn.Sequential,
) -> list[torch.Tensor]:
    """Fuse the four levels.

    Args:
        feats_a: Per-date A features per level (B, C_i, h_i, w_i) (score maps included).
        feats_b: Same for date B.
        neck_out: FPN outputs p_i (B, neck_channels, h_i, w_i).
        minus_conv: :func:`build_minus_convs` output.
        channel_att: :func:`build_channel_att` output.

    Returns:
        e_1..e_4, each (B, fusion_channels, h_i, w_i).
    """
    minus = [minus_conv[i](torch.abs(a - b)) for i, (a, b) in enumerate(zip(feats_a, feats_b, strict=True))]
    weights = [change_weight(a, b) for a, b in zip(feats_a, feats_b, strict=True)]
    fused = []
    for i, p in enumerate(neck_out):
        fused.append(channel_att[i](torch.cat([p * weights[i], minus[i], p], dim=1)))
    return fused
