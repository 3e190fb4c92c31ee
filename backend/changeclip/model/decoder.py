"""Vision-language-driven decoder (the official ``SwinTextDecode``) and its segmentation head.

The two dates' text embeddings become 4 tokens of width 128 ([LinA(T_A); LinB(T_B)]). Three
stages each up-sample the running map x2 (nearest, conv3x3, GroupNorm 32, ReLU), run two Swin
blocks with text injection, and merge with the next finer fused level through 1x1/3x3 convs.
The head (dropout + conv1x1) gives 2-class logits at 1/4 of the input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from changeclip.model.config import ChangeCLIPConfig
from changeclip.model.swin import SwinTextLayer


class _UpConv(nn.Module):
    """Nearest x2 up-sampling, conv3x3 (bias), GroupNorm(32), ReLU (attribute ``up``)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, h, w) -> (B, Cout, 2h, 2w)."""
        return self.up(x)


class SwinUpsample(nn.Module):
    """Up-sample a map and refine it with text-aware Swin blocks (official ``SwinDecoder``).

    Args:
        channels: Input channels (the output has channels // 2).
        cfg: Network configuration (swin_depth, swin_heads, swin_window).
    """

    def __init__(self, channels: int, cfg: ChangeCLIPConfig) -> None:
        super().__init__()
        half = channels // 2
        self.layer = SwinTextLayer(half, cfg.swin_depth, cfg.swin_heads, cfg.swin_window, cfg.swin_drop_path_rate)
        self.up = _UpConv(channels, half)
        self.conv_relu = nn.Sequential(nn.Conv2d(half, half, kernel_size=1), nn.ReLU())

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) with text tokens (B, T, C/2) -> (B, C/2, 2h, 2w)."""
        x = self.up(x)
        b, c, h, w = x.shape
        tokens = self.layer(x.reshape(b, c, h * w).permute(0, 2, 1), text, (h, w))
        return self.conv_relu(tokens.permute(0, 2, 1).reshape(b, c, h, w))


class DecoderStage(nn.Module):
    """One decoder stage (official ``Swin_Decoder``): up-sample x, project skip y, merge.

    Args:
        channels: Channels of x, y and of the output.
        cfg: Network configuration.
    """

    def __init__(self, channels: int, cfg: ChangeCLIPConfig) -> None:
        super().__init__()
        self.up = SwinUpsample(channels, cfg)
        self.conv_relu = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels // 2, kernel_size=1), nn.ReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x (B, C, h, w), skip (B, C, 2h, 2w), text (B, T, C/2) -> (B, C, 2h, 2w)."""
        up = self.up(x, text)
        return self.conv_relu(torch.cat([self.conv2(skip), up], dim=1))


class SwinTextDecode(nn.Module):
    """The decode head (module ``decode_head``).

    Args:
        cfg: Network configuration (decoder_channels, text_token_dim, embed_dim, num_classes).
    """

    def __init__(self, cfg: ChangeCLIPConfig) -> None:
        super().__init__()
        ch = cfg.decoder_channels
        self.conv_seg = nn.Conv2d(ch, cfg.num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(0.1)
        self.layer1 = DecoderStage(ch, cfg)
        self.layer2 = DecoderStage(ch, cfg)
        self.layer3 = DecoderStage(ch, cfg)
        self.linearA = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.text_token_dim), nn.LayerNorm(cfg.text_token_dim))
        self.linearB = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.text_token_dim), nn.LayerNorm(cfg.text_token_dim))

    def forward(self, inputs: Sequence[torch.Tensor], text_a: torch.Tensor, text_b: torch.Tensor) -> torch.Tensor:
        """Decode the fused pyramid.

        Args:
            inputs: e1..e4, (B, C, H/4, W/4) ... (B, C, H/32, W/32).
            text_a: Date-A text embeddings (B, 2, D) after the context update.
            text_b: Date-B text embeddings (B, 2, D).

        Returns:
            Logits (B, num_classes, H/4, W/4).
        """
        e1, e2, e3, e4 = inputs
        text = torch.cat([self.linearA(text_a), self.linearB(text_b)], dim=1)  # B, 4, 128
        d1 = self.layer1(e4, e3, text)
        d2 = self.layer2(d1, e2, text)
        d3 = self.layer3(d2, e1, text)
        return self.conv_seg(self.dropout(d3))
