"""Every dimension of a ChangeCLIP network, as one frozen dataclass, and the named presets.

The presets reproduce the official configurations (github dyzy41/ChangeCLIP, branch ``release``,
``configs/0cd_ce/changeclip_*.py``) and the two reduced TINY variants of the parity kit
(``shared/parity/README.md``, section "The TINY configuration"). The widths that the official code
hard-codes (neck, fusion, decoder) are fields too, so that a configuration file says everything
about the network it describes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from changeclip.errors import ModelError

BackboneKind = Literal["rn50", "vit"]

IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
"""Per-channel mean (RGB, 0-255 scale) subtracted before the network; repeated for both dates."""

IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
"""Per-channel standard deviation (RGB, 0-255 scale) dividing after the mean."""

SIZE_MULTIPLE_PX = 32
"""Input height and width must be multiples of this (the network's coarsest stride)."""


@dataclass(frozen=True)
class ChangeCLIPConfig:
    """The architecture of one ChangeCLIP network.

    Field groups: image encoder (``backbone`` selects which fields apply), text encoder, context
    decoder, fusion/neck/decoder widths. Derived channel lists are properties.

    Attributes:
        name: Preset name, informative only.
        backbone: ``"rn50"`` (CLIP modified ResNet with dense attention pool) or ``"vit"``.
        embed_dim: Joint embedding size D (global/dense visual embedding and text embedding).
        input_resolution: Image size the stored positional table was made for; the stored grid is
            ``input_resolution // 32`` (RN50) or ``input_resolution // patch_size`` (ViT) per side.
        rn_width: RN50 stem/base width (stem convs give ``width // 2`` then ``width`` channels).
        rn_layers: RN50 bottleneck counts of layer1..layer4.
        rn_heads: Heads of the RN50 attention pool (over ``width * 32`` channels).
        vit_width: ViT token width.
        vit_layers: ViT transformer blocks.
        vit_heads: ViT attention heads.
        patch_size: ViT patch size (only 16 is supported, as in the official configs).
        vit_out_indices: ViT blocks (0-based) whose outputs feed the four pyramid adapters.
        vit_drop_path_rate: ViT stochastic depth of the last block (training only).
        context_length: Total text sequence length (prompt tokens + learned context vectors).
        prompt_length: Token ids per prompt (the CLIP BPE context length of the prompts).
        vocab_size: CLIP BPE vocabulary size.
        text_width: Text transformer width (also the width of the learned context vectors).
        text_heads: Text transformer heads.
        text_layers: Text transformer blocks.
        ctx_width: Context decoder width.
        ctx_heads: Context decoder heads.
        ctx_layers: Context decoder layers.
        ctx_dropout: Context decoder dropout (training only).
        score_concat_index: Pyramid level that receives the two score-map channels.
        neck_channels: FPN output channels.
        fusion_channels: Output channels of the |A-B| convs and of the SE fusion.
        se_ratio: Squeeze ratio of the SE gate (hidden = make_divisible(3 * fusion / ratio, 8)).
        decoder_channels: SwinTextDecode channels.
        swin_dim: Token width inside the Swin decoder stages (decoder_channels // 2).
        swin_heads: Heads of each Swin block.
        swin_depth: Swin blocks per decoder stage.
        swin_window: Swin window size.
        swin_drop_path_rate: Stochastic depth of the last Swin block of a stage (training only).
        text_token_dim: Width of the decoder's text tokens.
        num_classes: Output classes (background, change).
    """

    name: str
    backbone: BackboneKind
    embed_dim: int
    input_resolution: int
    rn_width: int = 64
    rn_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    rn_heads: int = 32
    vit_width: int = 768
    vit_layers: int = 12
    vit_heads: int = 12
    patch_size: int = 16
    vit_out_indices: tuple[int, int, int, int] = (3, 5, 7, 11)
    vit_drop_path_rate: float = 0.1
    context_length: int = 77
    prompt_length: int = 64
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    ctx_width: int = 256
    ctx_heads: int = 4
    ctx_layers: int = 3
    ctx_dropout: float = 0.1
    score_concat_index: int = 3
    neck_channels: int = 256
    fusion_channels: int = 256
    se_ratio: int = 16
    decoder_channels: int = 256
    swin_dim: int = 128
    swin_heads: int = 2
    swin_depth: int = 2
    swin_window: int = 7
    swin_drop_path_rate: float = 0.2
    text_token_dim: int = 128
    num_classes: int = 2

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ModelError(f"invalid ChangeCLIP configuration {self.name!r}: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        out: list[str] = []
        if self.backbone not in ("rn50", "vit"):
            out.append(f"backbone={self.backbone!r} is not one of 'rn50', 'vit'")
        if self.context_length <= self.prompt_length:
            out.append(f"context_length={self.context_length} must exceed prompt_length={self.prompt_length}")
        if self.text_width % self.text_heads:
            out.append(f"text_width={self.text_width} is not divisible by text_heads={self.text_heads}")
        if self.ctx_width % self.ctx_heads:
            out.append(f"ctx_width={self.ctx_width} is not divisible by ctx_heads={self.ctx_heads}")
        if not 0 <= self.score_concat_index < 4:
            out.append(f"score_concat_index={self.score_concat_index} must be 0..3")
        if self.backbone == "rn50":
            if (self.rn_width * 32) % self.rn_heads:
                out.append(f"rn_width*32={self.rn_width * 32} is not divisible by rn_heads={self.rn_heads}")
            if len(self.rn_layers) != 4 or min(self.rn_layers) < 1:
                out.append(f"rn_layers={self.rn_layers} must be four counts >= 1")
        if self.backbone == "vit":
            if self.patch_size != 16:
                out.append(f"patch_size={self.patch_size} is unsupported; the official adapters need 16")
            if self.vit_width % self.vit_heads:
                out.append(f"vit_width={self.vit_width} is not divisible by vit_heads={self.vit_heads}")
            if len(self.vit_out_indices) != 4 or max(self.vit_out_indices) >= self.vit_layers:
                out.append(f"vit_out_indices={self.vit_out_indices} must be 4 block indices < {self.vit_layers}")
        if self.decoder_channels != 2 * self.swin_dim:
            out.append(f"decoder_channels={self.decoder_channels} must be 2 * swin_dim={self.swin_dim}")
        if self.decoder_channels != self.fusion_channels:
            out.append(f"decoder_channels={self.decoder_channels} must equal fusion_channels={self.fusion_channels}")
        return out

    # ----------------------------------------------------------------- derived dimensions
    @property
    def n_context_vectors(self) -> int:
        """Learned context vectors inserted after the start token (77 - 64 = 13 officially)."""
        return self.context_length - self.prompt_length

    @property
    def pos_grid_size(self) -> int:
        """Side of the stored positional grid (16 for every official and TINY preset)."""
        stride = 32 if self.backbone == "rn50" else self.patch_size
        return self.input_resolution // stride

    @property
    def level_channels(self) -> tuple[int, int, int, int]:
        """Per-date channels of the four pyramid levels, before the score maps are added."""
        if self.backbone == "rn50":
            return (self.rn_width * 4, self.rn_width * 8, self.rn_width * 16, self.rn_width * 32)
        return (self.vit_width,) * 4

    @property
    def time_channels(self) -> tuple[int, ...]:
        """Per-date channels after the 2 score maps are concatenated (the ``minus_channel`` list)."""
        chans = list(self.level_channels)
        chans[self.score_concat_index] += self.num_classes
        return tuple(chans)

    @property
    def neck_in_channels(self) -> tuple[int, ...]:
        """FPN input channels: both dates concatenated per level."""
        return tuple(2 * c for c in self.time_channels)

    @property
    def se_in_channels(self) -> int:
        """Channels entering the SE fusion: [p*w, minus, p]."""
        return 2 * self.neck_channels + self.fusion_channels

    @property
    def se_hidden_channels(self) -> int:
        """Hidden width of the SE gate (mmcv make_divisible(c // ratio, 8))."""
        return _make_divisible(self.se_in_channels // self.se_ratio, 8)

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict of every field (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> str:
        """The configuration as compact, key-sorted JSON."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChangeCLIPConfig:
        """Rebuild a configuration from :meth:`to_dict` output.

        Raises:
            ModelError: unknown or missing keys, or values that fail validation.
        """
        if not isinstance(data, dict):
            raise ModelError(f"a ChangeCLIP configuration must be a JSON object, got {type(data).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ModelError(f"unknown ChangeCLIP configuration keys {unknown}; known keys: {sorted(names)}")
        missing = [n for n in ("name", "backbone", "embed_dim", "input_resolution") if n not in data]
        if missing:
            raise ModelError(f"ChangeCLIP configuration lacks required keys {missing}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("rn_layers", "vit_out_indices") and isinstance(value, list):
                value = tuple(int(v) for v in value)
            kwargs[key] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ModelError(f"bad ChangeCLIP configuration: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ChangeCLIPConfig:
        """Parse :meth:`to_json` output (see :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"ChangeCLIP configuration is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _make_divisible(value: int, divisor: int, min_ratio: float = 0.9) -> int:
    """mmcv's make_divisible: round to a multiple of divisor, not below min_ratio * value."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < min_ratio * value:
        new_value += divisor
    return new_value


_TINY_TEXT = dict(text_width=32, text_heads=2, text_layers=2, ctx_width=32, ctx_heads=2, ctx_layers=1)

PRESETS: dict[str, ChangeCLIPConfig] = {
    "rn50": ChangeCLIPConfig(name="rn50", backbone="rn50", embed_dim=1024, input_resolution=512, score_concat_index=3),
    "vit-b-16": ChangeCLIPConfig(
        name="vit-b-16", backbone="vit", embed_dim=512, input_resolution=256, score_concat_index=2
    ),
    "tiny-rn50": ChangeCLIPConfig(
        name="tiny-rn50",
        backbone="rn50",
        embed_dim=64,
        input_resolution=512,
        rn_width=8,
        rn_layers=(1, 1, 1, 1),
        rn_heads=32,
        score_concat_index=3,
        **_TINY_TEXT,  # type: ignore[arg-type]
    ),
    "tiny-vit": ChangeCLIPConfig(
        name="tiny-vit",
        backbone="vit",
        embed_dim=64,
        input_resolution=256,
        vit_width=64,
        vit_layers=4,
        vit_heads=2,
        vit_out_indices=(0, 1, 2, 3),
        score_concat_index=2,
        **_TINY_TEXT,  # type: ignore[arg-type]
    ),
}
"""Named configurations: the two official variants and the parity kit's two TINY variants."""


def get_preset(name: str) -> ChangeCLIPConfig:
    """The preset called ``name``.

    Raises:
        ModelError: unknown name (the message lists the known ones).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelError(f"unknown ChangeCLIP variant {name!r}; choose one of {sorted(PRESETS)}") from None
