"""Vision-to-language context decoder (DenseCLIP's ``ContextDecoder``).

The text embeddings of one date (queries) attend to that date's visual tokens (global token + one
token per dense pixel) through a few pre-norm decoder layers; the output is a text update that the
parent network scales by its learned per-channel ``gamma`` and adds to the text embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

from changeclip.model.config import ChangeCLIPConfig


class _Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v projections and a biased output projection."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attend queries (B, N, C) to keys/values (B, M, C); returns (B, N, C)."""
        b, n, c = q.shape
        m = k.shape[1]
        h = self.num_heads
        qh = self.q_proj(q).reshape(b, n, h, c // h).transpose(1, 2)
        kh = self.k_proj(k).reshape(b, m, h, c // h).transpose(1, 2)
        vh = self.v_proj(v).reshape(b, m, h, c // h).transpose(1, 2)
        attn = (qh @ kh.transpose(-2, -1)) * self.scale
        out = self.attn_drop(attn.softmax(dim=-1)) @ vh  # b, h, n, c/h
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class _DecoderLayer(nn.Module):
    """Pre-norm layer: self-attention, cross-attention to memory, GELU MLP; each residual."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = _Attention(dim, num_heads, dropout)
        self.cross_attn = _Attention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * 4),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim * 4, dim),
        )

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Update text tokens (B, K, C) with memory tokens (B, M, C); returns (B, K, C)."""
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y)
        x = x + self.cross_attn(self.norm2(x), memory, memory)
        return x + self.dropout(self.mlp(self.norm3(x)))


class ContextDecoder(nn.Module):
    """The context decoder (module ``context_decoder``).

    Args:
        cfg: Network configuration (ctx_width, ctx_heads, ctx_layers, ctx_dropout, embed_dim).
    """

    def __init__(self, cfg: ChangeCLIPConfig) -> None:
        super().__init__()
        dim, visual = cfg.ctx_width, cfg.embed_dim
        self.memory_proj = nn.Sequential(nn.LayerNorm(visual), nn.Linear(visual, dim), nn.LayerNorm(dim))
        self.text_proj = nn.Sequential(nn.LayerNorm(visual), nn.Linear(visual, dim))
        self.decoder = nn.ModuleList([_DecoderLayer(dim, cfg.ctx_heads, cfg.ctx_dropout) for _ in range(cfg.ctx_layers)])
        self.out_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, visual))

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Compute the text update.

        Args:
            text: Text embeddings (B, K, D), K = 2 prompts (background, foreground).
            visual: Visual context tokens (B, 1 + h*w, D): global embedding then dense pixels.

        Returns:
            Update (B, K, D), to be scaled by ``gamma`` and added to ``text``.
        """
        memory = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.decoder:
            x = layer(x, memory)
        return self.out_proj(x)
