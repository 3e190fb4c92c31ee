"""Small building blocks shared by the ChangeCLIP modules.

The CLIP tower blocks follow OpenAI CLIP's layout (sequence-first ``nn.MultiheadAttention``,
QuickGELU MLP, LayerNorm computed in float32), so their state-dict keys are the official ones:
``attn.in_proj_weight``, ``ln_1``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_2``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype (CLIP towers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of ``x`` (any shape, any float dtype)."""
        orig = x.dtype
        out = F.layer_norm(x.float(), self.normalized_shape, self._w32(), self._b32(), self.eps)
        return out.to(orig)

    def _w32(self) -> torch.Tensor | None:
        return None if self.weight is None else self.weight.float()

    def _b32(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.float()


class QuickGELU(nn.Module):
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply elementwise."""
        return x * torch.sigmoid(1.702 * x)


def drop_path(x: torch.Tensor, rate: float, training: bool, batch_dim: int = 0) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate``.

    Args:
        x: Branch output; samples along ``batch_dim``.
        rate: Drop probability (0 = identity).
        training: Only active in training mode.
        batch_dim: Axis of the samples (1 for sequence-first tokens).

    Returns:
        ``x`` with dropped samples zeroed and kept ones scaled by 1 / (1 - rate).
    """
    if rate <= 0.0 or not training:
        return x
    shape = [1] * x.ndim
    shape[batch_dim] = x.shape[batch_dim]
    keep = x.new_empty(shape).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


def linear_rates(last: float, n: int) -> list[float]:
    """``n`` rates growing linearly from 0 to ``last`` (plain Python: works under a meta device)."""
    if n <= 1:
        return [0.0] * n
    return [last * i / (n - 1) for i in range(n)]


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block of the CLIP towers (sequence-first layout).

    Args:
        width: Token width.
        heads: Attention heads.
        drop_path_rate: Stochastic depth of both residual branches (training only).
    """

    def __init__(self, width: int, heads: int, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm32(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm32(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the block.

        Args:
            x: Tokens (L, N, width), sequence first.
            attn_mask: Optional additive float mask (L, L), e.g. the causal -inf mask.

        Returns:
            Tokens (L, N, width).
        """
        y = self.ln_1(x)
        y = self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        x = x + drop_path(y, self.drop_path_rate, self.training, batch_dim=1)
        return x + drop_path(self.mlp(self.ln_2(x)), self.drop_path_rate, self.training, batch_dim=1)


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` named ``resblocks`` (official key prefix).

    Args:
        width: Token width.
        layers: Number of blocks.
        heads: Attention heads per block.
        drop_path_rate: Stochastic depth of the last block; rates grow linearly from 0 (training only).
    """

    def __init__(self, width: int, layers: int, heads: int, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.width = width
        rates = linear_rates(drop_path_rate, layers)
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, rates[i]) for i in range(layers)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run every block on tokens (L, N, width); returns (L, N, width)."""
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class ConvAct(nn.Module):
    """Convolution with bias followed by an activation (mmcv ``ConvModule`` without norm).

    The convolution is the attribute ``conv``, so keys read ``<name>.conv.weight``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size; padding keeps the spatial size.
        act: ``"relu"``, ``"hsigmoid"`` (clamp((x + 3) / 6, 0, 1)) or ``"none"``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, act: str = "relu") -> None:
        super().__init__()
        if act not in ("relu", "hsigmoid", "none"):
            raise ValueError(f"unknown activation {act!r}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=True)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve (B, Cin, H, W) to (B, Cout, H, W) and activate."""
        x = self.conv(x)
        if self.act == "relu":
            return F.relu(x)
        if self.act == "hsigmoid":
            return ((x + 3.0) / 6.0).clamp(0.0, 1.0)
        return x
