"""CLIP image and text embeddings for describing polygons.

:class:`ClipEncoder` is what the describer needs from a CLIP model: L2-normalised image
embeddings of RGB crops, L2-normalised text embeddings, the logit scale, and the tokenizer's
context length. :class:`OpenClipEncoder` implements it with open_clip, from

- the OpenAI ViT-B/16 weights the tagger uses (``--describe-weights`` a local file, else the
  open_clip download when the machine is online), with the architecture inferred from the file;
- or a remote-sensing CLIP state dict (RemoteCLIP, GeoRSCLIP, ...) with its open_clip
  architecture named (``--describe-model ViT-B-32``), built exactly as its publishers load it.

Nothing is downloaded when ``HF_HUB_OFFLINE`` is set or the hub cannot be reached: the error
names the options instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from changeclip.errors import InputError, ModelError
from changeclip.model.tagger import (
    CLIP_MEAN,
    CLIP_STD,
    _hub_unreachable,
    _offline,
    build_clip_from_state_dict,
    read_clip_state_dict,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16"
"""The default: OpenAI CLIP ViT-B/16 (the tagger's model)."""

_NO_WEIGHTS_HELP = ("Pass --describe-weights FILE: OpenAI CLIP ViT-B-16.pt or open_clip's ViT-B-16 'openai' "
                    "open_clip_pytorch_model.bin (the same file as --tagger-weights), or a remote-sensing CLIP "
                    "checkpoint such as RemoteCLIP-ViT-B-32.pt or GeoRSCLIP's with --describe-model ViT-B-32; "
                    "or run without --describe")


class ClipEncoder(Protocol):
    """The parts of a CLIP model the describer uses."""

    image_size: int
    context_length: int

    def encode_images(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """L2-normalised embeddings ``(N, D)`` of RGB crops, each float ``(3, H, W)`` in 0..255."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings ``(N, D)`` of texts."""
        ...

    def token_count(self, text: str) -> int:
        """Tokens of ``text`` including start and end tokens (must be <= context_length)."""
        ...

    @property
    def logit_scale(self) -> float:
        """CLIP's temperature (``exp`` of the learned log scale)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description (for summary.json)."""
        ...


class OpenClipEncoder:
    """:class:`ClipEncoder` over an open_clip ``CLIP`` model.

    Args:
        weights: Local CLIP weights file, or None for the OpenAI ViT-B/16 download.
        model_name: open_clip architecture of ``weights`` (e.g. ``"ViT-B-32"`` for RemoteCLIP);
            None: inferred from the file (OpenAI-style CLIP with QuickGELU).
        device: Torch device string.
        batch_size: Crops per forward pass.

    Raises:
        ModelError: weights missing, unreadable, not CLIP, not of the named architecture, or a
            download impossible.
    """

    def __init__(self, weights: str | Path | None = None, model_name: str | None = None,
                 device: str = "cpu", batch_size: int = 32) -> None:
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.weights_path = str(weights) if weights is not None else None
        self.model_name = model_name or DEFAULT_MODEL
        if weights is None:
            if model_name not in (None, DEFAULT_MODEL):
                raise ModelError(f"--describe-model {model_name} needs --describe-weights FILE (only the OpenAI "
                                 f"{DEFAULT_MODEL} weights can be downloaded)")
            self.model = self._download_openai()
            self.source = f"open_clip:{DEFAULT_MODEL}/openai"
        elif model_name is None:
            self.model = build_clip_from_state_dict(read_clip_state_dict(weights))
            self.source = f"file {weights} (OpenAI-style CLIP, architecture inferred)"
        else:
            self.model = self._named(weights, model_name)
            self.source = f"file {weights} (open_clip {model_name})"
        self.model.to(self.device).eval()
        size = self.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        self.context_length = int(self.model.positional_embedding.shape[0])
        self._mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)

    @staticmethod
    def _download_openai() -> torch.nn.Module:
        if _offline():
            raise ModelError("describing polygons needs CLIP weights, and downloads are disabled (HF_HUB_OFFLINE "
                             f"is set). {_NO_WEIGHTS_HELP}")
        why = _hub_unreachable()
        if why is not None:
            raise ModelError(f"describing polygons needs CLIP weights, and the OpenAI ViT-B/16 weights cannot be "
                             f"downloaded ({why}). {_NO_WEIGHTS_HELP}")
        import open_clip

        try:
            model = open_clip.create_model(DEFAULT_MODEL, pretrained="openai")
        except Exception as exc:  # network / hub failures
            raise ModelError(f"could not download CLIP ViT-B/16 'openai' weights ({exc}). {_NO_WEIGHTS_HELP}") from exc
        return model.float().eval()

    @staticmethod
    def _named(weights: str | Path, model_name: str) -> torch.nn.Module:
        import open_clip

        if model_name not in open_clip.list_models():
            close = [m for m in open_clip.list_models() if model_name.lower()[:5] in m.lower()][:8]
            raise ModelError(f"--describe-model {model_name!r} is not an open_clip architecture"
                             + (f"; close ones: {', '.join(close)}" if close else "")
                             + " (RemoteCLIP and GeoRSCLIP publish ViT-B-32, ViT-L-14 and RN50 checkpoints)")
        sd = read_clip_state_dict(weights)
        model = open_clip.create_model(model_name, pretrained=None)
        if "logit_scale" in sd and sd["logit_scale"].ndim != model.logit_scale.ndim:
            sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
        try:
            model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ModelError(f"{weights} does not fit open_clip {model_name} ({first}); name the architecture the "
                             "checkpoint was published for with --describe-model, or leave it out for OpenAI-style "
                             "CLIP files") from None
        return model.float().eval()

    @property
    def logit_scale(self) -> float:
        """CLIP's temperature (``exp`` of the learned log scale, capped at 100 as in training)."""
        return float(min(self.model.logit_scale.exp().item(), 100.0))

    def token_count(self, text: str) -> int:
        """Tokens of ``text`` with CLIP's BPE, including start and end tokens."""
        from open_clip.tokenizer import _tokenizer

        return len(_tokenizer.encode(text)) + 2

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``(N, D)`` on the CPU, float32."""
        from open_clip.tokenizer import tokenize

        for t in texts:
            if self.token_count(t) > self.context_length:
                raise InputError(f"the text {t!r} is {self.token_count(t)} tokens long; CLIP reads at most "
                                 f"{self.context_length}: shorten it")
        out = []
        for i in range(0, len(texts), 256):
            tokens = tokenize(list(texts[i:i + 256]), context_length=self.context_length).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    def _resized(self, crop: np.ndarray) -> np.ndarray:
        """A crop as CLIP's own preprocessing makes it: 8-bit, shortest side to S (PIL bicubic), centre
        crop; (S, S, 3) uint8. PIL on 8-bit images is what OpenAI's pipeline runs (and fast)."""
        from PIL import Image

        rgb = np.ascontiguousarray(np.clip(np.rint(crop), 0, 255).astype(np.uint8).transpose(1, 2, 0))
        img = Image.fromarray(rgb)
        w, h = img.size
        s = self.image_size
        scale = s / min(w, h)
        size = (max(s, int(round(w * scale))), max(s, int(round(h * scale))))
        if size != (w, h):
            img = img.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - s) // 2, (size[1] - s) // 2
        return np.asarray(img.crop((left, top, left + s, top + s)))

    @torch.inference_mode()
    def encode_images(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """L2-normalised image embeddings ``(N, D)`` on the CPU, float32, of RGB 0..255 crops."""
        out = []
        for i in range(0, len(crops), self.batch_size):
            batch = np.stack([self._resized(c) for c in crops[i:i + self.batch_size]])
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
            x = (x / 255.0 - self._mean) / self._std
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    def describe(self) -> dict[str, Any]:
        """Model name, weights source and input size (for summary.json)."""
        return {"model": self.model_name, "weights": self.weights_path or f"open_clip:{DEFAULT_MODEL}/openai",
                "source": self.source, "image_size": self.image_size}
