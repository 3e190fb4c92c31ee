"""Zero-shot CLIP tagger: the top-9 remote-sensing tags of each tile (spec §4.1, §8-3).

The official pipeline tags every image offline with a frozen OpenAI CLIP ViT-B/16: CLIP's own
preprocessing (resize the shortest side to 224 with bicubic filtering, centre crop, CLIP
mean/std), the 56 plain class names as texts (no "a photo of" template), a softmax over
``logits_per_image`` and the 9 most probable names in descending order. :class:`Tagger`
does the same on batches of tiles held as tensors.

The CLIP model is built with open_clip from the dimensions found in a local state dict
(OpenAI JIT archive, open_clip ``.bin``/``.pt`` state dict or ``.safetensors``). Nothing is
downloaded unless no file is given and ``HF_HUB_OFFLINE`` is unset.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from changeclip.errors import InputError, ModelError
from changeclip.model.prompts import RS_CLASSES, TOP_K_TAGS
from changeclip.preflight import regular_file_problem

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_REQUIRED_KEYS = ("visual.conv1.weight", "token_embedding.weight", "positional_embedding",
                  "text_projection", "ln_final.weight", "logit_scale")
_OFFLINE_VALUES = ("1", "true", "yes", "on")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def _hub_unreachable(timeout_s: float = 5.0) -> str | None:
    """Why the model hub cannot be reached, or None if it can (or a proxy will decide).

    A quick TCP probe: without it an offline machine spends about a minute in the hub
    client's retries before the same failure.
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except (OSError, ValueError) as exc:
        return f"{host} cannot be reached: {exc}"


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") for n in archive.namelist())


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an OpenAI/open_clip CLIP state dict from a local file.

    Args:
        path: ``.safetensors``, an OpenAI TorchScript archive (``ViT-B-16.pt``) or a
            ``torch.save``-d state dict (``open_clip_pytorch_model.bin``); read on the CPU.

    Returns:
        The state dict with OpenAI key names (``visual.*``, ``transformer.*``, ...).

    Raises:
        ModelError: missing or unreadable file, or not a CLIP state dict.
    """
    p = Path(path)
    problem = regular_file_problem(p)
    if problem:
        raise ModelError(f"CLIP weights file {p} {problem}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p))
        elif _is_torchscript(p):
            sd = torch.jit.load(str(p), map_location="cpu").state_dict()  # OpenAI JIT archive
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except ModelError:
        raise
    except Exception as exc:  # any reader failure is the file's fault
        raise ModelError(f"cannot read CLIP weights {p}: {type(exc).__name__}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise ModelError(f"{p} does not hold a state dict (found {type(sd).__name__})")
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    missing = [k for k in _REQUIRED_KEYS if k not in sd]
    if missing:
        raise ModelError(f"{p} is not an OpenAI/open_clip CLIP checkpoint: missing {', '.join(missing)}")
    return sd


def build_clip_from_state_dict(sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Build an open_clip ``CLIP`` (QuickGELU, fp32) sized from ``sd`` and load it strictly.

    Args:
        sd: OpenAI-format CLIP state dict (ViT or ModifiedResNet image tower).

    Returns:
        The model in eval mode, fp32, on the CPU.

    Raises:
        ModelError: the state dict does not fit the inferred architecture.
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    sd = dict(sd)
    for key in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(key, None)
    if "visual.proj" in sd:
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        layers: Any = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        vision = CLIPVisionCfg(layers=layers, width=width, patch_size=patch, image_size=patch * grid)
    else:
        layers = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4))
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = CLIPVisionCfg(layers=layers, width=width, image_size=grid * 32)
    text_width = sd["ln_final.weight"].shape[0]
    text = CLIPTextCfg(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=text_width,
        heads=max(1, text_width // 64),
        layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
    )
    model = CLIP(sd["text_projection"].shape[1], vision_cfg=vision, text_cfg=text, quick_gelu=True)
    if sd["logit_scale"].ndim != model.logit_scale.ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"CLIP weights do not fit the architecture inferred from them: {exc}") from exc
    return model.float().eval()


def random_clip_state_dict(seed: int = 0, tiny: bool = True) -> dict[str, torch.Tensor]:
    """Randomly initialised CLIP weights (for tests and demos only: the tags are meaningless).

    Args:
        seed: torch RNG seed.
        tiny: ``True`` = a small ViT (width 64, 2 layers, patch 16, 32 px input, text width 64,
            1 layer); ``False`` = the full ViT-B/16 shape (150 M parameters).

    Returns:
        OpenAI-format state dict (fp32).
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if tiny:
            model = CLIP(64, CLIPVisionCfg(layers=2, width=64, patch_size=16, image_size=32),
                         CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
                         quick_gelu=True)
        else:
            model = CLIP(512, CLIPVisionCfg(layers=12, width=768, patch_size=16, image_size=224),
                         CLIPTextCfg(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
                         quick_gelu=True)
    finally:
        torch.random.set_rng_state(gen_state)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def clip_preprocess(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """CLIP preprocessing on a batch, as OpenAI's PIL pipeline does it on 8-bit images.

    Resize the shortest side to ``size`` (bicubic, antialiased), centre crop, normalise.

    Args:
        images: float (N, 3, H, W), RGB 0..255.
        size: The model's input size S.
        mean, std: CLIP's normalisation, shaped (1, 3, 1, 1) on the images' device.

    Returns:
        float32 (N, 3, S, S).
    """
    x = images.float().clamp(0, 255).round()  # PIL works on 8-bit images
    h, w = x.shape[-2:]
    s = size
    new = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)  # shortest side -> s
    if new != (h, w):
        x = F.interpolate(x, size=new, mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0, 255).round()
    top = int(round((new[0] - s) / 2.0))
    left = int(round((new[1] - s) / 2.0))
    x = x[..., top:top + s, left:left + s]
    return (x / 255.0 - mean) / std


class Tagger:
    """CLIP zero-shot tagger over the 56-class remote-sensing vocabulary.

    Args:
        weights: Local CLIP weights file (OpenAI ViT-B/16 for faithful tags). ``None``: ask
            open_clip for the ``ViT-B-16``/``openai`` download, which is refused when
            ``HF_HUB_OFFLINE`` is set.
        device: Torch device string.
        classes: Vocabulary (default: the official 56 names, in order).
        top_k: Tags kept per image.
        batch_size: Images per forward pass.

    Raises:
        ModelError: weights missing/unreadable/not CLIP, or a download is impossible.
    """

    def __init__(self, weights: str | Path | None = None, device: str = "cpu",
                 classes: Sequence[str] = RS_CLASSES, top_k: int = TOP_K_TAGS, batch_size: int = 16) -> None:
        self.classes = tuple(classes)
        if not 1 <= top_k <= len(self.classes):
            raise InputError(f"top_k must be 1..{len(self.classes)}, got {top_k}")
        self.top_k = int(top_k)
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device)
        self.weights_path = str(weights) if weights is not None else None
        if weights is not None:
            self.model = build_clip_from_state_dict(read_clip_state_dict(weights))
        else:
            self.model = self._download_openai()
        self.model.to(self.device).eval()
        visual_size = self.model.visual.image_size
        self.image_size = int(visual_size[0] if isinstance(visual_size, tuple | list) else visual_size)
        self._mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        self._class_features: torch.Tensor | None = None
        if self.image_size != 224 or getattr(self.model.visual, "patch_size", (16, 16))[0] != 16:
            log.warning("tagger weights are not CLIP ViT-B/16 at 224 px (image size %d): tags will not "
                        "match the official pipeline", self.image_size)

    @staticmethod
    def _download_openai() -> torch.nn.Module:
        if _offline():
            raise ModelError(
                "no tagger weights given and downloads are disabled (HF_HUB_OFFLINE is set). Pass "
                "--tagger-weights FILE (OpenAI CLIP ViT-B-16.pt or open_clip's ViT-B-16 openai "
                "open_clip_pytorch_model.bin), or use prompt mode 'none' or 'words', which need no tagger."
            )
        why = _hub_unreachable()
        if why is not None:
            raise ModelError(
                f"no tagger weights given, and the CLIP ViT-B/16 'openai' weights cannot be downloaded ({why}). "
                "Pass --tagger-weights FILE (OpenAI CLIP ViT-B-16.pt or open_clip's ViT-B-16 openai "
                "open_clip_pytorch_model.bin; in the plugin: put it in a tagger/ subfolder of the weights folder), "
                "or use prompt mode 'none' or 'words', which need no tagger."
            )
        import open_clip

        try:
            model = open_clip.create_model("ViT-B-16", pretrained="openai")
        except Exception as exc:  # network / hub failures
            raise ModelError(
                f"could not download CLIP ViT-B/16 'openai' weights for the tagger ({exc}). Pass "
                "--tagger-weights FILE, or use prompt mode 'none' or 'words'."
            ) from exc
        return model.float().eval()

    def describe(self) -> dict[str, Any]:
        """Summary for summary.json: weights path, image size, vocabulary size, top-k."""
        return {"weights": self.weights_path or "open_clip:ViT-B-16/openai", "image_size": self.image_size,
                "classes": len(self.classes), "top_k": self.top_k}

    @torch.inference_mode()
    def class_features(self) -> torch.Tensor:
        """L2-normalised text features of the class names, (C, D) float32, computed once."""
        if self._class_features is None:
            from open_clip.tokenizer import tokenize as clip_tokenize

            ctx = int(self.model.positional_embedding.shape[0])
            tokens = clip_tokenize(list(self.classes), context_length=ctx).to(self.device)
            feats = self.model.encode_text(tokens).float()
            self._class_features = F.normalize(feats, dim=-1)
        return self._class_features

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP preprocessing of a batch (see :func:`clip_preprocess`) at this model's input size."""
        return clip_preprocess(images, self.image_size, self._mean, self._std)

    @torch.inference_mode()
    def probabilities(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities per image.

        Args:
            images: float (N, 3, H, W) RGB 0..255 (numpy or torch).

        Returns:
            float32 (N, C) on the CPU, rows summing to 1.
        """
        x = torch.as_tensor(images)
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"tagger input must be (N, 3, H, W) RGB, got shape {tuple(x.shape)}")
        text = self.class_features()
        scale = self.model.logit_scale.exp().float()
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            batch = self.preprocess(x[i:i + self.batch_size].to(self.device))
            img = F.normalize(self.model.encode_image(batch).float(), dim=-1)
            out.append((scale * img @ text.t()).softmax(dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def tag(self, images: np.ndarray | torch.Tensor) -> list[list[str]]:
        """Top-k tag names per image, most probable first.

        Args:
            images: float (N, 3, H, W) RGB 0..255.

        Returns:
            N lists of ``top_k`` class names.
        """
        probs = self.probabilities(images)
        idx = torch.topk(probs, self.top_k, dim=-1).indices.tolist()
        return [[self.classes[j] for j in row] for row in idx]
