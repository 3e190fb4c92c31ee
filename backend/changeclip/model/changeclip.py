"""The ChangeCLIP network: shared image encoder, prompt text encoder, context decoder, bitemporal
fusion, FPN neck and text-aware Swin decoder, wired as the official ``ChangeCLIP.encode_decode``.

Data flow for a (B, 6, H, W) input (A = channels 0-2, B = channels 3-5, ImageNet-normalised RGB):

1. each date goes through the same image encoder -> 4 pyramid levels + (global, dense) embeddings;
2. per date, the two prompt embeddings T (B, 2, D) are updated by the context decoder from that
   date's visual tokens: T <- T + gamma * dT;
3. cosine score maps between the dense embeddings and T (B, 2, h, w) are appended to one level;
4. FPN over [A_i || B_i], fusion with |A_i - B_i| and the cosine change weight, SE gating;
5. the Swin decoder (text tokens from both dates) and a 1x1 head give logits at H/4, bilinearly
   up-sampled (align_corners False) to (H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from changeclip.errors import InputError
from changeclip.model.config import SIZE_MULTIPLE_PX, ChangeCLIPConfig
from changeclip.model.context_decoder import ContextDecoder
from changeclip.model.decoder import SwinTextDecode
from changeclip.model.fusion import build_channel_att, build_minus_convs, fuse_levels
from changeclip.model.image_encoder_rn50 import CLIPResNetWithAttention, ImageFeatures
from changeclip.model.image_encoder_vit import CLIPVisionTransformer
from changeclip.model.neck import FPN
from changeclip.model.text_encoder import CLIPTextContextEncoder


class InputSizeError(InputError, ValueError):
    """The image height or width is not a positive multiple of 32."""


def _nearest_valid(size: int) -> str:
    low = (size // SIZE_MULTIPLE_PX) * SIZE_MULTIPLE_PX
    high = low + SIZE_MULTIPLE_PX
    return f"{high}" if low == 0 else f"{low} or {high}"


def check_input_size(height: int, width: int) -> None:
    """Check that a tile can go through the network.

    Args:
        height: Tile height in pixels.
        width: Tile width in pixels.

    Raises:
        InputSizeError: a side is not a positive multiple of 32; the message names the nearest
            valid sizes.
    """
    bad = []
    for label, size in (("height", height), ("width", width)):
        if size <= 0 or size % SIZE_MULTIPLE_PX:
            bad.append(f"{label} {size} (nearest valid: {_nearest_valid(size)})")
    if bad:
        raise InputSizeError(
            f"ChangeCLIP needs image sides that are multiples of {SIZE_MULTIPLE_PX} px; got {height}x{width}: "
            + ", ".join(bad)
            + ". Pad or crop the tile to a valid size (256 reproduces the official setting)."
        )


class ChangeCLIP(nn.Module):
    """The whole network; attribute names equal the official state-dict prefixes.

    Args:
        cfg: Network configuration.
    """

    def __init__(self, cfg: ChangeCLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.contexts2 = nn.Parameter(torch.empty(1, 1, cfg.n_context_vectors, cfg.text_width))
        self.gamma = nn.Parameter(torch.full((cfg.embed_dim,), 1e-4))
        nn.init.trunc_normal_(self.contexts2)
        self.backbone: nn.Module = (
            CLIPResNetWithAttention(cfg) if cfg.backbone == "rn50" else CLIPVisionTransformer(cfg)
        )
        self.text_encoder = CLIPTextContextEncoder(cfg)
        self.context_decoder = ContextDecoder(cfg)
        self.neck = FPN(cfg.neck_in_channels, cfg.neck_channels)
        self.decode_head = SwinTextDecode(cfg)
        self.minus_conv = build_minus_convs(cfg)
        self.channel_att = build_channel_att(cfg)

    # ----------------------------------------------------------------- text
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embed prompts with the learned context vectors.

        Depends only on the tokens (not on the image), so callers may cache the result per prompt.

        Args:
            tokens: Token ids (N, prompt_length) int64 (CLIP BPE at context 64), or any
                (..., prompt_length).

        Returns:
            Text embeddings (N, D) (or (..., D)), before the per-image context update.
        """
        return self.text_encoder(tokens, self.contexts2)

    def _update_text(self, feats: ImageFeatures, text: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Context-update one date's text and append its score maps to the pyramid.

        Returns:
            Updated text (B, 2, D) and the 4 levels with the score maps concatenated at
            ``score_concat_index``.
        """
        global_emb, dense = feats[4]
        b, c, h, w = dense.shape
        visual = torch.cat([global_emb.reshape(b, c, 1), dense.reshape(b, c, h * w)], dim=2).permute(0, 2, 1)
        text = text + self.gamma * self.context_decoder(text, visual)
        score = torch.einsum("bchw,bkc->bkhw", F.normalize(dense, dim=1, p=2), F.normalize(text, dim=2, p=2))
        levels = list(feats[:4])
        i = self.cfg.score_concat_index
        levels[i] = torch.cat([levels[i], score], dim=1)
        return text, levels

    # ----------------------------------------------------------------- forward
    def _check(self, x: torch.Tensor, text_a: torch.Tensor, text_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 6:
            raise InputError(
                f"ChangeCLIP expects a (B, 6, H, W) tensor (date A RGB then date B RGB), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise InputError(
                f"ChangeCLIP expects a float tensor (ImageNet-normalised RGB), got dtype {x.dtype}; "
                "subtract IMAGENET_MEAN and divide by IMAGENET_STD first"
            )
        check_input_size(int(x.shape[2]), int(x.shape[3]))
        b, d = x.shape[0], self.cfg.embed_dim
        out = []
        for label, t in (("text_a", text_a), ("text_b", text_b)):
            if t.ndim != 3 or t.shape[1:] != (2, d) or t.shape[0] not in (1, b):
                raise InputError(
                    f"{label} must be ({b}, 2, {d}) text embeddings (background, foreground) from encode_text, "
                    f"got shape {tuple(t.shape)}"
                )
            out.append(t.expand(b, 2, d).to(self.gamma.dtype))
        return out[0], out[1]

    def forward(self, x: torch.Tensor, text_a: torch.Tensor, text_b: torch.Tensor) -> torch.Tensor:
        """Change logits for a batch of bitemporal tiles.

        Args:
            x: (B, 6, H, W) float, ImageNet-normalised RGB of date A then date B; H and W
                multiples of 32.
            text_a: (B, 2, D) (or (1, 2, D), broadcast) :meth:`encode_text` output for date A's
                [background, foreground] prompts.
            text_b: Same for date B.

        Returns:
            Logits (B, 2, H, W): class 0 = no change, class 1 = change.

        Raises:
            InputError: wrong shapes (InputSizeError, also a ValueError, for H/W not multiples of 32).
        """
        text_a, text_b = self._check(x, text_a, text_b)
        height, width = x.shape[2:]
        feats_a = self.backbone(x[:, :3])
        feats_b = self.backbone(x[:, 3:])
        text_a, levels_a = self._update_text(feats_a, text_a)
        text_b, levels_b = self._update_text(feats_b, text_b)
        neck_out = self.neck([torch.cat([a, b], dim=1) for a, b in zip(levels_a, levels_b, strict=True)])
        fused = fuse_levels(levels_a, levels_b, neck_out, self.minus_conv, self.channel_att)
        logits = self.decode_head(fused, text_a, text_b)
        return F.interpolate(logits, size=(int(height), int(width)), mode="bilinear", align_corners=False)

    def forward_tokens(self, x: torch.Tensor, tokens_a: torch.Tensor, tokens_b: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` from prompt token ids.

        Args:
            x: (B, 6, H, W) as in :meth:`forward`.
            tokens_a: (B, 2, prompt_length) int64 ids of date A's [background, foreground] prompts.
            tokens_b: Same for date B (the official test-time code builds B's foreground prompt
                from A's tags; callers choose).

        Returns:
            Logits (B, 2, H, W).
        """
        for label, t in (("tokens_a", tokens_a), ("tokens_b", tokens_b)):
            if t.ndim != 3 or t.shape[1:] != (2, self.cfg.prompt_length):
                raise InputError(f"{label} must be (B, 2, {self.cfg.prompt_length}) token ids, got {tuple(t.shape)}")
        return self.forward(x, self.encode_text(tokens_a), self.encode_text(tokens_b))
