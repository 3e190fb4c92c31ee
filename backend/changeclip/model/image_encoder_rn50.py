"""CLIP modified ResNet with a dense attention pool (the official ``CLIPResNetWithAttention``).

Differences from torchvision's ResNet (inherited from OpenAI CLIP): a three-conv stem with an
average pool, anti-aliased strides (an AvgPool before the stride-1 conv), and a final multi-head
attention pool. The pool here is *dense* (DenseCLIP): every token is a query, so besides the global
embedding it returns a per-pixel embedding map. Its positional table is stored for a
``pos_grid_size`` square grid and bilinearly resized at every forward to the actual grid (§1.3-3).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from changeclip.model.config import ChangeCLIPConfig

ImageFeatures = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]
"""(f1, f2, f3, f4, (global (B, D), dense (B, D, h, w))) as returned by both image encoders."""


class Bottleneck(nn.Module):
    """CLIP bottleneck: 1x1, 3x3, [AvgPool(stride)], 1x1 (x4 expansion), residual, ReLU.

    Args:
        inplanes: Input channels.
        planes: Bottleneck channels (output is ``4 * planes``).
        stride: Spatial reduction done by average pooling (1 or 2).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool: nn.Module = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, inplanes, H, W) -> (B, 4 * planes, H / stride, W / stride)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class DenseAttentionPool2d(nn.Module):
    """Multi-head attention pool whose queries are all tokens (mean token + every pixel).

    Args:
        grid_size: Side of the stored positional grid (the table has grid_size**2 + 1 rows).
        embed_dim: Channels of the input map.
        num_heads: Attention heads.
        output_dim: Channels of the output embeddings.
    """

    def __init__(self, grid_size: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid_size**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads
        self.embed_dim = embed_dim
        self.grid_size = grid_size

    def resized_positions(self, height: int, width: int) -> torch.Tensor:
        """The positional table for an (height, width) grid: (1 + height*width, embed_dim).

        The grid part is resized bilinearly (align_corners False) from the stored grid, which is an
        identity when the sizes agree.
        """
        table = self.positional_embedding
        grid = table[1:].reshape(1, self.grid_size, self.grid_size, self.embed_dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
        grid = grid.reshape(self.embed_dim, height * width).permute(1, 0)
        return torch.cat([table[:1], grid], dim=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool a feature map.

        Args:
            x: (B, embed_dim, h, w).

        Returns:
            Global embedding (B, output_dim) and dense embeddings (B, output_dim, h, w).
        """
        b, c, h, w = x.shape
        tokens = x.reshape(b, c, h * w).permute(0, 2, 1)  # B, hw, C
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # B, 1+hw, C
        tokens = tokens + self.resized_positions(h, w).to(tokens.dtype)[None]
        n = tokens.shape[1]
        head_dim = c // self.num_heads
        q = self.q_proj(tokens).reshape(b, n, self.num_heads, head_dim).transpose(1, 2)
        k = self.k_proj(tokens).reshape(b, n, self.num_heads, head_dim).transpose(1, 2)
        v = self.v_proj(tokens).reshape(b, n, self.num_heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # B, heads, n, head_dim
        out = self.c_proj(out.transpose(1, 2).reshape(b, n, c))  # B, n, D
        out = out.permute(0, 2, 1)  # B, D, n
        return out[:, :, 0], out[:, :, 1:].reshape(b, -1, h, w)


class CLIPResNetWithAttention(nn.Module):
    """The RN50 image encoder (module ``backbone`` of the RN50 variant).

    Args:
        cfg: Network configuration (uses rn_width, rn_layers, rn_heads, embed_dim, pos_grid_size).
    """

    def __init__(self, cfg: ChangeCLIPConfig) -> None:
        super().__init__()
        width = cfg.rn_width
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, cfg.rn_layers[0])
        self.layer2 = self._make_layer(width * 2, cfg.rn_layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, cfg.rn_layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, cfg.rn_layers[3], stride=2)
        self.attnpool = DenseAttentionPool2d(cfg.pos_grid_size, width * 32, cfg.rn_heads, cfg.embed_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> ImageFeatures:
        """Encode one date.

        Args:
            x: (B, 3, H, W) normalised image, H and W multiples of 32.

        Returns:
            f1 (B, 4w, H/4, W/4), f2 (B, 8w, H/8, W/8), f3 (B, 16w, H/16, W/16),
            f4 (B, 32w, H/32, W/32) with w = rn_width, and (global (B, D), dense (B, D, H/32, W/32)).
        """
        x = x.to(self.conv1.weight.dtype)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = F.relu(bn(conv(x)))
        x = self.avgpool(x)
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return f1, f2, f3, f4, self.attnpool(f4)
