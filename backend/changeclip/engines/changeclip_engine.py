"""The ChangeCLIP network as a tiled change engine (weights through the shared model cache)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from changeclip.errors import ModelError
from changeclip.inference.devices import resolve_device
from changeclip.inference.predictor import ChangeCLIPPredictor, load_model
from changeclip.preflight import regular_file_problem
from changeclip.weights.training_data import training_data

if TYPE_CHECKING:
    from changeclip.inference.cache import ModelCache
    from changeclip.protocol import DetectParams


def _file_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return os.path.abspath(path), st.st_mtime_ns, st.st_size


class ChangeCLIPEngine:
    """ChangeCLIP (RN50 or ViT-B/16) change probabilities for RGB tile pairs.

    Args:
        params: The job's parameters (weights, variant, device, precision, prompt options).
        cache: Model cache; the same weights/variant/device/precision are loaded once.

    Raises:
        ModelError: No weights given, the file is missing, unreadable or not ChangeCLIP; prompt
            mode ``auto`` without usable tagger weights.
        InputError: The device does not exist.
    """

    name = "changeclip"
    default_threshold = 0.5
    clip_input = True
    needs_context = True

    def __init__(self, params: DetectParams, cache: ModelCache | None = None) -> None:
        if not params.weights:
            raise ModelError("the changeclip engine needs weights: pass --weights FILE (a ChangeCLIP "
                             ".safetensors or official .pth file), or use --engine irmad, which needs none")
        problem = regular_file_problem(params.weights)
        if problem:
            raise ModelError(f"weights file {params.weights!r} {problem}; check the path, or use "
                             "--engine irmad, which needs no weights")
        device = resolve_device(params.device)
        key = ("changeclip", *_file_key(params.weights), params.variant, device, params.precision)

        def make_model() -> Any:
            return load_model(params.weights, params.variant, device, params.precision)

        loaded = cache.get(key, make_model) if cache is not None else make_model()
        tagger = None
        if params.prompt_mode == "auto":
            from changeclip.model.tagger import Tagger

            tkey = ("tagger", *(_file_key(params.tagger_weights) if params.tagger_weights else ("openai",)),
                    device)

            def make_tagger() -> Any:
                return Tagger(params.tagger_weights, device=device)

            tagger = cache.get(tkey, make_tagger) if cache is not None else make_tagger()
        self.predictor = ChangeCLIPPredictor(loaded, params.prompt_mode, params.prompt, tagger=tagger,
                                             official_test_prompts=params.official_test_prompts,
                                             batch_size=params.batch_size)
        self.device = loaded.device
        self.training_data = training_data(loaded.meta)

    def fit(self, before_sample: np.ndarray, after_sample: np.ndarray) -> None:
        """No global fit: the network is already trained."""

    def predict_proba(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Change probability ``(N, H, W)`` float32 for ``(N, 3, H, W)`` 0..255 RGB tile pairs."""
        return self.predictor.predict_proba(before, after)

    def describe(self) -> dict[str, Any]:
        """Model, weights hash, device, precision and prompt policy."""
        return {"name": "changeclip", **self.predictor.describe()}
