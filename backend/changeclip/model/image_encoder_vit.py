"""CLIP ViT-B/16 image encoder with pyramid adapters (the official ``CLIPVisionTransformer``).

Outputs of four intermediate blocks (class token dropped) become a 4-level pyramid through the
``fpn1..fpn4`` adapters (x4 up, x2 up, identity, x2 down, each after a 1-group GroupNorm). The last
block's tokens, all of them, go through ``ln_post`` and ``proj`` to give the global (class token)
and dense embeddings. Two official quirks are kept (spec §1.3): the class token receives
``class_embedding`` twice (once as the token, once added to its positional row), and the stored
positional grid is bilinearly resized at every forward to the actual patch grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from changeclip.model.config import ChangeCLIPConfig
from changeclip.model.image_encoder_rn50 import ImageFeatures
from changeclip.model.layers import LayerNorm32, Transformer


class CLIPVisionTransformer(nn.Module):
    """The ViT image encoder (module ``backbone`` of the ViT variant).

    Args:
        cfg: Network configuration (vit_width, vit_layers, vit_heads, patch_size, vit_out_indices,
            embed_dim, pos_grid_size).
    """

    def __init__(self, cfg: ChangeCLIPConfig) -> None:
        super().__init__()
        width = cfg.vit_width
        scale = width**-0.5
        self.grid_size = cfg.pos_grid_size
        self.out_indices = tuple(cfg.vit_out_indices)
        # Parameter order matches the official state dict.
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size**2 + 1, width))
        self.proj = nn.Parameter(scale * torch.randn(width, cfg.embed_dim))
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.ln_pre = LayerNorm32(width)
        self.transformer = Transformer(width, cfg.vit_layers, cfg.vit_heads, cfg.vit_drop_path_rate)
        self.ln_post = LayerNorm32(width)
        self.fpn1 = nn.Sequential(
            nn.GroupNorm(1, width),
            nn.ConvTranspose2d(width, width, kernel_size=2, stride=2),
            nn.BatchNorm2d(width),
            nn.GELU(),
            nn.ConvTranspose2d(width, width, kernel_size=2, stride=2),
        )
        self.fpn2 = nn.Sequential(nn.GroupNorm(1, width), nn.ConvTranspose2d(width, width, kernel_size=2, stride=2))
        self.fpn3 = nn.GroupNorm(1, width)
        self.fpn4 = nn.Sequential(nn.GroupNorm(1, width), nn.MaxPool2d(kernel_size=2, stride=2))

    def positions(self, height: int, width: int) -> torch.Tensor:
        """Positional rows for a (height, width) patch grid: (1 + height*width, vit_width).

        Row 0 is ``positional_embedding[0] + class_embedding`` (the official double add).
        """
        table = self.positional_embedding
        c = table.shape[1]
        grid = table[1:].reshape(1, self.grid_size, self.grid_size, c).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
        grid = grid.reshape(c, height * width).permute(1, 0)
        cls_row = (table[0] + self.class_embedding)[None]
        return torch.cat([cls_row, grid], dim=0)

    def forward(self, x: torch.Tensor) -> ImageFeatures:
        """Encode one date.

        Args:
            x: (B, 3, H, W) normalised image, H and W multiples of 32.

        Returns:
            f1 (B, C, H/4, W/4), f2 (B, C, H/8, W/8), f3 (B, C, H/16, W/16), f4 (B, C, H/32, W/32)
            with C = vit_width, and (global (B, D), dense (B, D, H/16, W/16)).
        """
        x = self.conv1(x.to(self.conv1.weight.dtype))  # B, C, h, w
        b, c, h, w = x.shape
        tokens = x.reshape(b, c, h * w).permute(0, 2, 1)
        cls_token = self.class_embedding.to(tokens.dtype).expand(b, 1, c)
        tokens = torch.cat([cls_token, tokens], dim=1)
        tokens = tokens + self.positions(h, w).to(tokens.dtype)[None]
        tokens = self.ln_pre(tokens).permute(1, 0, 2)  # L, B, C

        taps: list[torch.Tensor] = []
        for i, block in enumerate(self.transformer.resblocks):
            tokens = block(tokens)
            if i in self.out_indices:
                taps.append(tokens[1:].permute(1, 2, 0).reshape(b, c, h, w).contiguous())
        f1 = self.fpn1(taps[0])
        f2 = self.fpn2(taps[1])
        f3 = self.fpn3(taps[2])
        f4 = self.fpn4(taps[3])

        emb = self.ln_post(tokens.permute(1, 0, 2)) @ self.proj  # B, 1+hw, D
        global_emb = emb[:, 0]
        dense = emb[:, 1:].reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return f1, f2, f3, f4, (global_emb, dense)
