"""Swin transformer blocks with text injection, used by the decoder's up-sampling stages.

Each :class:`SwinTextBlock` first lets every pixel token attend to the 4 text tokens (a single-head
"low-rank bilinear" attention, projected back and added), then runs a standard Swin block: window
attention with a relative position bias (cyclic shift + -100 mask on odd blocks), then a GELU MLP.
Feature maps are zero-padded (after ``norm1``) to a multiple of the window size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from changeclip.model.layers import drop_path, linear_rates


def relative_position_index(window: int) -> torch.Tensor:
    """The standard Swin relative position index table for a square window.

    Args:
        window: Window side.

    Returns:
        (window**2, window**2) int64, entries in [0, (2 * window - 1)**2).
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    flat = coords.flatten(1)  # 2, N
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()  # N, N, 2
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1).to(torch.int64)


def _window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C); H, W multiples of window."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def _window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, window * window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def shifted_window_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive mask (nW, window**2, window**2) for the shifted windows: 0 within a region, -100 across."""
    img = torch.zeros((1, hp, wp, 1), device=device)
    cnt = 0
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for hs in bounds:
        for ws in bounds:
            img[:, hs, ws, :] = cnt
            cnt += 1
    wins = _window_partition(img, window).squeeze(-1)  # nW, N
    diff = wins.unsqueeze(1) - wins.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """Window multi-head self-attention with a learned relative position bias.

    Args:
        dim: Token width.
        window: Window side.
        num_heads: Heads.
    """

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend within windows.

        Args:
            x: (B * nW, N, C) window tokens, N = window**2.
            mask: Optional (nW, N, N) additive mask.

        Returns:
            (B * nW, N, C).
        """
        bw, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(bw, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)  # bw, h, n, n
        index = self.relative_position_index.reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(n, n, h).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, h, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, h, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LowRankBilinearAttention(nn.Module):
    """Single-head attention of pixel tokens (queries) to text tokens (keys and values).

    Args:
        dim: Width of pixel and text tokens.
        d_k: Query/key width (scale 1 / sqrt(d_k)).
        d_v: Value width.
    """

    def __init__(self, dim: int, d_k: int, d_v: int) -> None:
        super().__init__()
        self.WQ = nn.Linear(dim, d_k)
        self.WK = nn.Linear(dim, d_k)
        self.WV = nn.Linear(dim, d_v)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Pixel tokens (B, L, dim) attend to text tokens (B, T, dim); returns (B, L, d_v)."""
        q = self.WQ(x)
        k = self.WK(text)
        v = self.WV(text)
        scores = (q @ k.transpose(-2, -1)) / (q.shape[-1] ** 0.5)
        return scores.softmax(dim=-1) @ v


class SwinTextBlock(nn.Module):
    """Text injection followed by a (shifted-)window Swin block.

    Args:
        dim: Token width.
        num_heads: Window-attention heads.
        window: Window side.
        shift: Cyclic shift (0 or window // 2).
        mlp_ratio: MLP hidden width / dim.
        drop_path_rate: Stochastic depth of the attention and MLP branches (training only).
    """

    def __init__(
        self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.proj = nn.Linear(2 * dim, dim)
        self.low_rank_bilinear = LowRankBilinearAttention(dim, dim // 2, 2 * dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, hw: tuple[int, int], mask: torch.Tensor) -> torch.Tensor:
        """Run the block.

        Args:
            x: Pixel tokens (B, H*W, dim), row-major.
            text: Text tokens (B, T, dim).
            hw: (H, W) of the token grid.
            mask: Shifted-window mask from :func:`shifted_window_mask` (used when shift > 0).

        Returns:
            (B, H*W, dim).
        """
        h, w = hw
        x = x + self.proj(self.low_rank_bilinear(x, text))
        b, length, c = x.shape
        shortcut = x
        y = self.norm1(x).view(b, h, w, c)
        pad_r = (self.window - w % self.window) % self.window
        pad_b = (self.window - h % self.window) % self.window
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift > 0:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(_window_partition(y, self.window), mask=mask if self.shift > 0 else None)
        y = _window_reverse(windows, self.window, hp, wp)
        if self.shift > 0:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        y = y[:, :h, :w, :].reshape(b, h * w, c)
        x = shortcut + drop_path(y, self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class SwinTextLayer(nn.Module):
    """``depth`` :class:`SwinTextBlock` s, shifts alternating 0, window // 2 (attribute ``blocks``).

    Args:
        dim: Token width.
        depth: Blocks.
        num_heads: Heads per block.
        window: Window side.
        drop_path_rate: Stochastic depth of the last block; rates grow linearly from 0 (training only).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.window = window
        self.shift = window // 2
        rates = linear_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            [
                SwinTextBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, drop_path_rate=rates[i])
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor, text: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Run the blocks on tokens (B, H*W, dim) with text (B, T, dim); returns (B, H*W, dim)."""
        hp = -(-hw[0] // self.window) * self.window
        wp = -(-hw[1] // self.window) * self.window
        mask = shifted_window_mask(hp, wp, self.window, self.shift, x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x, text, hw, mask)
        return x
