"""ChangeCLIP inference on batches of bitemporal tiles: model loading and the predictor.

:func:`load_model` turns a weights file into a network in eval mode on a device, with its
precision policy and a text-feature cache. :class:`ChangeCLIPPredictor` adds the prompt
policy (spec §5) and maps 0..255 RGB tile pairs to change logits / probabilities:

* ``none``: constant prompts (no tags, no words); text features computed once.
* ``words``: the user's words as the foreground tags; text features computed once.
* ``auto``: the CLIP tagger's top-9 tags of each tile (plus the user's words if any); text
  features cached per distinct prompt string.

``official_test_prompts=True`` reproduces the official test-time quirk (spec §1.3-1): date
B's foreground prompt is built from date A's tags.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changeclip.errors import InputError, ModelError
from changeclip.inference.devices import cpu_has_native_bf16, resolve_device, resolve_precision
from changeclip.inference.runtime import FALLBACK_COST, RuntimeChoice, RuntimeSession, choose_runtime, physical_cores
from changeclip.model import IMAGENET_MEAN, IMAGENET_STD, ChangeCLIP, ChangeCLIPConfig, build_model_from_state_dict
from changeclip.model.prompts import RS_CLASSES, TOP_K_TAGS, TextFeatureCache, build_prompts, count_tokens, tokenize
from changeclip.model.tagger import Tagger
from changeclip.weights import LoadedWeights, is_random, load_weights
from changeclip.weights.checks import RECOMPUTABLE_SUFFIXES
from changeclip.weights.training_data import training_data

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT_MODES = ("auto", "none", "words")


@dataclass
class LoadedModel:
    """A network ready for inference.

    Attributes:
        model: The network, eval mode, fp32 weights, on ``device``.
        cfg: Its configuration.
        device: ``cpu`` or ``cuda:N``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (the latter two via autocast).
        weights_path: File the weights came from.
        weights_sha256: SHA-256 of that file.
        source_format: ``native`` or ``official``.
        meta: The weights file's metadata.
        text_cache: Text-encoder outputs per prompt string (shared by every predictor of
            this model).
        channels_last: Whether inputs are passed in channels-last layout.
        runtime: What runs the image side: ``torch``, ``onnxruntime`` or ``openvino`` (the text
            encoder is always PyTorch).
        runtime_choice: How ``--runtime`` was resolved (asked for, reason).
        runtime_fallback: Why the run fell back to torch, when it did.
        threads: Intra-op threads of a CPU runtime (physical cores).
    """

    model: ChangeCLIP
    cfg: ChangeCLIPConfig
    device: str
    precision: str
    weights_path: str
    weights_sha256: str
    source_format: str
    meta: dict[str, Any] = field(default_factory=dict)
    text_cache: TextFeatureCache | None = None
    channels_last: bool = False
    runtime: str = "torch"
    runtime_choice: RuntimeChoice | None = None
    runtime_fallback: str | None = None
    threads: int | None = None
    export_s: dict[str, float] = field(default_factory=dict)
    _sessions: dict[tuple[int, int], RuntimeSession] = field(default_factory=dict, repr=False)
    _graphs: dict[tuple[int, int], Path] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of this model's precision (a no-op for fp32 and int8)."""
        if self.precision not in ("bf16", "fp16"):
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=_DTYPES[self.precision])

    def fall_back(self, why: str) -> None:
        """Run the rest of this model's life in PyTorch, with a warning saying why and what it costs."""
        was = self.runtime
        self.runtime_fallback = f"{was} unavailable ({why}); ran PyTorch instead"
        if self.precision == "int8":
            self.precision = "fp32"
        log.warning("runtime %s could not be used (%s): falling back to PyTorch %s; %s", was, why,
                    self.precision, FALLBACK_COST)
        self.runtime = "torch"
        self._sessions.clear()

    def fp32_graph(self, height: int, width: int) -> Path:
        """The verified fp32 ONNX graph of this model at this tile size (exported on first use)."""
        from changeclip.inference.onnx_export import cached_export
        from changeclip.inference.runtime import runtime_version

        key = (height, width)
        if key not in self._graphs:
            t = time.perf_counter()
            self._graphs[key] = cached_export(self.model, self.cfg.name, self.cfg.embed_dim, self.weights_sha256,
                                              self.runtime, runtime_version(self.runtime), height, width)
            self.export_s[f"{height}x{width}"] = round(time.perf_counter() - t, 2)
        return self._graphs[key]

    def session(self, height: int, width: int) -> RuntimeSession | None:
        """The CPU runtime's session for this tile size (fp32, or bf16 on OpenVINO); None for torch.

        Exports and loads on first use; on any failure falls back to torch (:meth:`fall_back`).
        """
        with self._lock:
            if self.runtime == "torch":
                return None
            key = (height, width)
            if key in self._sessions:
                return self._sessions[key]
            try:
                path = self.fp32_graph(height, width)
                graph_precision = "bf16" if self.precision == "bf16" else "fp32"
                self._sessions[key] = RuntimeSession(self.runtime, str(path), graph_precision, self.threads or 1)
            except Exception as exc:  # import, export and load errors all mean: this runtime cannot run here
                log.debug("runtime %s failed", self.runtime, exc_info=True)
                self.fall_back(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip())
                return None
            return self._sessions[key]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``model.encode_text`` under this model's precision, float32 out. (N, 64) -> (N, D)."""
        with torch.inference_mode(), self.autocast():
            return self.model.encode_text(tokens).float()


def _fill_recomputable(state: dict[str, torch.Tensor], cfg: ChangeCLIPConfig) -> dict[str, torch.Tensor]:
    """Add rebuildable integer buffers (Swin index tables, BN counters) a checkpoint lacks."""
    from changeclip.model import build_model
    from changeclip.model.swin import relative_position_index

    skeleton = build_model(cfg, device="meta").state_dict()
    missing = [k for k in skeleton if k not in state and k.endswith(RECOMPUTABLE_SUFFIXES)]
    if not missing:
        return state
    state = dict(state)
    for key in missing:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        else:
            state[key] = relative_position_index(cfg.swin_window).to(skeleton[key].dtype)
    log.info("rebuilt %d integer buffer(s) the checkpoint did not store", len(missing))
    return state


def load_model(weights: str | Path | LoadedWeights, variant: str = "auto", device: str = "auto",
               precision: str = "auto", runtime: str = "torch") -> LoadedModel:
    """Load ChangeCLIP weights into a network ready for inference.

    Args:
        weights: Weights file (native ``.safetensors`` or official ``.pth``) or an already
            loaded :class:`~changeclip.weights.LoadedWeights`.
        variant: ``auto``, ``rn50`` or ``vit-b-16``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (fp32 on CPU; bf16 autocast on CUDA, fp16 where bf16 is
            unsupported), ``fp32``, ``bf16``, ``fp16`` or ``int8`` (CPU runtimes only).
        runtime: ``torch`` (default here), ``auto``, ``onnxruntime`` or ``openvino``
            (:mod:`changeclip.inference.runtime`); a CPU runtime exports and loads its graph on
            the first batch of each tile size (:meth:`LoadedModel.session`).

    Returns:
        The loaded model (eval mode, on the device, channels-last for RN50: its convolutions run
        faster in that layout on CUDA and on oneDNN CPUs, with the same results to ~1e-6).

    Raises:
        ModelError: weights missing, unreadable or of another model/variant.
        InputError: unusable device or precision.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    choose_runtime(runtime, dev, prec, False)  # bad combinations fail before the weights are read
    loaded = weights if isinstance(weights, LoadedWeights) else load_weights(weights, variant)
    choice = choose_runtime(runtime, dev, prec, cpu_has_native_bf16() if dev == "cpu" else False,
                            loaded.cfg.backbone)
    if isinstance(weights, LoadedWeights) and variant != "auto":
        from changeclip.weights.checks import require_variant

        require_variant(loaded.cfg, variant, Path(loaded.path).name or "weights")
    state = _fill_recomputable(loaded.state_dict, loaded.cfg)
    model = build_model_from_state_dict(loaded.cfg, state, device=dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    channels_last = loaded.cfg.backbone == "rn50"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    result = LoadedModel(model=model, cfg=loaded.cfg, device=dev, precision=prec, weights_path=loaded.path,
                         weights_sha256=loaded.sha256, source_format=loaded.source_format, meta=loaded.meta,
                         channels_last=channels_last, runtime=choice.runtime, runtime_choice=choice,
                         threads=physical_cores() if choice.runtime != "torch" else None)
    result.text_cache = TextFeatureCache(result.encode_text, device=dev)
    if choice.runtime != "torch":
        from changeclip.inference.runtime import runtime_version

        try:
            runtime_version(choice.runtime)
        except Exception as exc:  # not installed or broken: warn now, before any tile
            result.fall_back(f"{type(exc).__name__}: {exc}")
    log.info("loaded %s (%s) on %s, precision %s, runtime %s (%s)", loaded.cfg.name, loaded.source_format, dev,
             result.precision, result.runtime, choice.reason)
    return result


def _softmax1(logits: np.ndarray) -> np.ndarray:
    """Class-1 softmax of (N, 2, H, W) logits: (N, H, W)."""
    return (1.0 / (1.0 + np.exp(logits[:, 0].astype(np.float64) - logits[:, 1]))).astype(np.float32)


def _longest_tags(k: int = TOP_K_TAGS) -> list[str]:
    """The ``k`` vocabulary names with the most tokens (worst case for prompt length)."""
    return sorted(RS_CLASSES, key=lambda c: -count_tokens(c))[:k]


class ChangeCLIPPredictor:
    """Change logits/probabilities for tile pairs, with one prompt policy.

    Args:
        loaded: Output of :func:`load_model`.
        prompt_mode: ``auto``, ``none`` or ``words``.
        prompt: User words (comma separated); required for ``words``, optional for ``auto``,
            must be empty for ``none``.
        tagger: The CLIP tagger, required for ``auto``.
        official_test_prompts: Build date B's foreground prompt from date A's tags (the
            official test-time behaviour; only matters in ``auto`` mode).
        batch_size: Tile pairs per forward pass.

    Raises:
        InputError: bad mode/words combination, or words too long for the prompt.
        ModelError: ``auto`` without a tagger.
    """

    def __init__(self, loaded: LoadedModel, prompt_mode: str = "auto", prompt: str = "",
                 tagger: Tagger | None = None, official_test_prompts: bool = False, batch_size: int = 8) -> None:
        if prompt_mode not in PROMPT_MODES:
            raise InputError(f"prompt mode must be one of {', '.join(PROMPT_MODES)}, got {prompt_mode!r}")
        words = " ".join((prompt or "").split())
        if prompt_mode == "none" and words:
            raise InputError("prompt words were given but prompt mode is 'none'; use mode 'words' or 'auto', "
                             "or leave the prompt empty")
        if prompt_mode == "words" and not words:
            raise InputError("prompt mode 'words' needs prompt words, e.g. 'building, road'")
        if prompt_mode == "auto" and tagger is None:
            raise ModelError("prompt mode 'auto' needs the CLIP tagger; pass --tagger-weights FILE, or use "
                             "prompt mode 'none' or 'words'")
        self.loaded = loaded
        self.prompt_mode = prompt_mode
        self.words = words
        self.tagger = tagger if prompt_mode == "auto" else None
        self.official_test_prompts = bool(official_test_prompts)
        self.batch_size = max(1, int(batch_size))
        self.tag_counts: Counter[str] = Counter()
        self.tiles_seen = 0
        if loaded.text_cache is None:
            loaded.text_cache = TextFeatureCache(loaded.encode_text, device=loaded.device)
        self.cache: TextFeatureCache = loaded.text_cache
        # fail now, not after the first tile, if the words cannot fit
        worst = _longest_tags() if prompt_mode == "auto" else []
        tokenize(list(build_prompts(worst, words)), loaded.cfg.prompt_length)
        mean = torch.tensor(IMAGENET_MEAN * 2, dtype=torch.float32).view(1, 6, 1, 1)
        std = torch.tensor(IMAGENET_STD * 2, dtype=torch.float32).view(1, 6, 1, 1)
        self._mean = mean.to(loaded.device)
        self._std = std.to(loaded.device)
        self._pinned: tuple[torch.Tensor, torch.Tensor] | None = None  # CUDA upload buffers
        self._int8: RuntimeSession | None = None
        self.int8_report: dict[str, Any] | None = None
        # why this predictor runs the fp32 graph although int8 was asked for (its quantisation
        # failed); kept here, not on the shared LoadedModel, so that a server's later jobs try again
        self.int8_fallback: str | None = None

    # ----------------------------------------------------------------- int8
    def _inputs(self, before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised (N, 6, H, W) inputs and (N, 2, D) text features of tiles, as numpy float32."""
        a = torch.from_numpy(np.ascontiguousarray(before, dtype=np.float32))
        b = torch.from_numpy(np.ascontiguousarray(after, dtype=np.float32))
        with torch.inference_mode():
            if self.prompt_mode != "auto":
                text_a = text_b = self._constant_text().expand(a.shape[0], -1, -1)
            else:
                prompts_a, prompts_b = self.prompts_for(a, b)
                text_a, text_b = self._text(prompts_a), self._text(prompts_b)
            x = (torch.cat([a, b], dim=1) - self._mean) / self._std
        return x.numpy(), np.ascontiguousarray(text_a.cpu().numpy()), np.ascontiguousarray(text_b.cpu().numpy())

    def calibrate(self, before: np.ndarray, after: np.ndarray) -> dict[str, Any] | None:
        """Build the int8 graph from sample tiles of the user's rasters and measure its cost.

        The first :data:`~changeclip.inference.int8.CALIBRATION_TILES` pairs calibrate the
        activation ranges; up to :data:`~changeclip.inference.int8.HELD_OUT_TILES` further pairs
        compare the int8 change probabilities with fp32's (``int8_report``). A no-op unless the
        precision is int8 on a CPU runtime; if quantisation fails, this predictor (this run) falls
        back to the runtime's fp32 graph with a warning and says so in :meth:`describe`
        (``runtime_fallback``); the loaded model is left as it was, so that a server's later jobs,
        on other rasters, try int8 again.

        Args:
            before, after: (N, 3, H, W) float32 0..255 RGB sample tiles.

        Returns:
            The report (also in :meth:`describe` under ``int8``), or None when not int8.
        """
        from changeclip.inference.int8 import CALIBRATION_TILES, cached_int8, mask_agreement

        lm = self.loaded
        if lm.precision != "int8" or lm.runtime == "torch" or self.int8_fallback is not None:
            return None
        self._check(before, after)
        h, w = before.shape[2:]
        t0 = time.perf_counter()
        fp32 = lm.session(h, w)
        if fp32 is None:  # the runtime failed: already fell back to torch fp32 with a warning
            return None
        n_cal = min(CALIBRATION_TILES, before.shape[0])
        if n_cal < 8:
            log.warning("int8 is calibrated on only %d tile pair(s): the activation ranges may not represent "
                        "the rasters; use a larger area", n_cal)
        x, ta, tb = self._inputs(before, after)
        graph = lm.fp32_graph(h, w)
        try:
            import json

            from changeclip.inference.onnx_export import MANIFEST_SUFFIX

            manifest = json.loads(Path(str(graph) + MANIFEST_SUFFIX).read_text(encoding="utf-8"))
            fp32_fields = {k: manifest[k] for k in ("weights_sha256", "variant", "tile", "runtime",
                                                   "runtime_version", "torch")}
            path, build_s, built = cached_int8(graph, x[:n_cal], ta[:n_cal], tb[:n_cal], fp32_fields)
            self._int8 = RuntimeSession(lm.runtime, str(path), "int8", lm.threads or 1)
        except Exception as exc:  # quantiser or loader failure: fp32 on the same runtime, said loudly
            log.debug("int8 failed", exc_info=True)
            log.warning("int8 quantisation failed (%s: %s): running the %s fp32 graph instead",
                        type(exc).__name__, exc, lm.runtime)
            self.int8_fallback = f"int8 failed ({type(exc).__name__}); ran {lm.runtime} fp32"
            return None
        held = slice(n_cal, before.shape[0]) if before.shape[0] > n_cal else slice(0, n_cal)
        p32 = _softmax1(fp32.run(x[held], ta[held], tb[held]))
        p8 = _softmax1(self._int8.run(x[held], ta[held], tb[held]))
        self.int8_report = {
            "calibration_tiles": n_cal, "compared_tiles": int(p32.shape[0]),
            "compared_on": "held-out sample tiles" if before.shape[0] > n_cal else "the calibration tiles",
            "quantise_s": round(build_s, 2), "from_cache": not built, "graph": str(path),
            "calibrate_total_s": round(time.perf_counter() - t0, 2), **mask_agreement(p8, p32)}
        log.warning("int8: change mask agrees with fp32 on %.2f %% of %d px (%s); mean |dp| %.4f",
                    100 * self.int8_report["mask_agreement"], self.int8_report["pixels"],
                    self.int8_report["compared_on"], self.int8_report["mean_abs_prob_diff"])
        return self.int8_report

    def _graph_session(self, before: np.ndarray, after: np.ndarray) -> RuntimeSession | None:
        """The CPU runtime's session for these tiles (int8: calibrated on them if not yet); None: torch."""
        lm = self.loaded
        if lm.runtime == "torch":
            return None
        h, w = before.shape[2:]
        if lm.precision == "int8":
            if self._int8 is None and self.int8_fallback is None:
                log.warning("int8 was not calibrated on sample tiles of the rasters: calibrating on the first "
                            "%d tile pair(s) given", before.shape[0])
                self.calibrate(before, after)
            if self._int8 is not None:
                return self._int8
        return lm.session(h, w)

    # ----------------------------------------------------------------- text
    def _constant_text(self) -> torch.Tensor:
        bg, fg = build_prompts([], self.words)
        return self.cache.get([bg, fg]).unsqueeze(0)  # 1, 2, D

    def prompts_for(self, before: np.ndarray | torch.Tensor,
                    after: np.ndarray | torch.Tensor) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The (background, foreground) prompts of date A and date B for each tile pair.

        Args:
            before: (N, 3, H, W) float32 0..255 RGB of date A.
            after: Same for date B.

        Returns:
            Two lists of N prompt pairs.
        """
        n = int(before.shape[0])
        if self.prompt_mode != "auto":
            pair = build_prompts([], self.words)
            return [pair] * n, [pair] * n
        if self.tagger is None:  # guarded in __init__; kept for type checkers
            raise ModelError("prompt mode 'auto' needs the CLIP tagger")
        tags_a = self.tagger.tag(before)
        tags_b = tags_a if self.official_test_prompts else self.tagger.tag(after)
        for tags in tags_a + ([] if self.official_test_prompts else tags_b):
            self.tag_counts.update(tags)
        return ([build_prompts(t, self.words) for t in tags_a],
                [build_prompts(t, self.words) for t in tags_b])

    def _text(self, prompts: Sequence[tuple[str, str]]) -> torch.Tensor:
        flat = [p for pair in prompts for p in pair]
        return self.cache.get(flat).view(len(prompts), 2, -1)

    # ----------------------------------------------------------------- images
    @staticmethod
    def _check(before: np.ndarray, after: np.ndarray) -> None:
        for label, arr in (("before", before), ("after", after)):
            if arr.ndim != 4 or arr.shape[1] != 3:
                raise InputError(f"{label} tiles must be (N, 3, H, W) RGB, got shape {tuple(arr.shape)}")
        if before.shape != after.shape:
            raise InputError(f"before and after tiles differ in shape: {tuple(before.shape)} vs {tuple(after.shape)}")
        h, w = before.shape[2:]
        if h % 32 or w % 32:
            raise InputError(f"tile size {h}x{w} px is not a multiple of 32; use e.g. 256")

    def _batches(self, before: np.ndarray, after: np.ndarray) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """Host tensors of each batch: (n, 3, H, W) float32 of both dates.

        On CUDA they are views of page-locked (pinned) buffers reused from batch to batch, so
        that ``to(device, non_blocking=True)`` is a real asynchronous copy. Reuse is safe: every
        batch ends with a synchronising copy of its result back to the host, after which the
        previous upload from the buffers has completed.
        """
        pinned = self.loaded.device.startswith("cuda")
        for i in range(0, before.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            a = torch.from_numpy(np.ascontiguousarray(before[sl], dtype=np.float32))
            b = torch.from_numpy(np.ascontiguousarray(after[sl], dtype=np.float32))
            if pinned:
                a, b = self._pinned_copy(a, b)
            yield sl, a, b

    def _pinned_copy(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.batch_size, *a.shape[1:])
        if self._pinned is None or tuple(self._pinned[0].shape) != shape:
            self._pinned = (torch.empty(shape, dtype=torch.float32, pin_memory=True),
                            torch.empty(shape, dtype=torch.float32, pin_memory=True))
        pa, pb = self._pinned[0][:a.shape[0]], self._pinned[1][:b.shape[0]]
        pa.copy_(a)
        pb.copy_(b)
        return pa, pb

    def _run(self, before: np.ndarray, after: np.ndarray, proba: bool) -> np.ndarray:
        """The forward loop; ``proba`` False keeps both logits, True the class-1 softmax.

        Returns:
            float32 (N, 2, H, W) logits, or (N, H, W) probabilities computed on the device (only
            these are copied back to the host).
        """
        before = np.asarray(before)
        after = np.asarray(after)
        self._check(before, after)
        lm = self.loaded
        shape = (before.shape[0], *before.shape[2:]) if proba else (before.shape[0], 2, *before.shape[2:])
        out = np.empty(shape, dtype=np.float32)
        constant = self._constant_text() if self.prompt_mode != "auto" else None
        graph = self._graph_session(before, after)
        with torch.inference_mode():
            for sl, a, b in self._batches(before, after):
                a = a.to(lm.device, non_blocking=True)
                b = b.to(lm.device, non_blocking=True)
                if constant is not None:
                    text_a = text_b = constant.expand(a.shape[0], -1, -1)
                else:
                    prompts_a, prompts_b = self.prompts_for(a, b)
                    text_a, text_b = self._text(prompts_a), self._text(prompts_b)
                x = (torch.cat([a, b], dim=1) - self._mean) / self._std
                if graph is not None:
                    logits = torch.from_numpy(graph.run(x.numpy(), text_a.numpy(), text_b.numpy()))
                else:
                    if lm.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with lm.autocast():
                        logits = lm.model(x, text_a, text_b)
                result = logits.float()
                if proba:
                    result = result.softmax(dim=1)[:, 1]
                out[sl] = result.cpu().numpy()
                self.tiles_seen += a.shape[0]
        return out

    def predict_logits(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Two-class change logits.

        Args:
            before: float32 (N, 3, H, W), RGB 0..255 (already radiometrically scaled), H and W
                multiples of 32.
            after: Same shape, date B.

        Returns:
            float32 (N, 2, H, W): class 0 = no change, class 1 = change.

        Raises:
            InputError: wrong shapes; PromptTooLong for over-long prompts.
        """
        return self._run(before, after, proba=False)

    def predict_proba(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Change probability (softmax over the two classes, class 1), computed on the device.

        Only the (N, H, W) probabilities are copied back, not the two-channel logits.

        Args:
            before: float32 (N, 3, H, W), RGB 0..255.
            after: Same shape, date B.

        Returns:
            float32 (N, H, W) in [0, 1].

        Raises:
            InputError: wrong shapes; PromptTooLong for over-long prompts.
        """
        return self._run(before, after, proba=True)

    def describe(self) -> dict[str, Any]:
        """Summary of the model and prompt policy (for summary.json)."""
        lm = self.loaded
        info: dict[str, Any] = {
            "variant": lm.cfg.name,
            "backbone": lm.cfg.backbone,
            "weights": lm.weights_path,
            "weights_sha256": lm.weights_sha256,
            "weights_format": lm.source_format,
            "random_weights": is_random(lm.meta),
            "training_data": training.to_dict() if (training := training_data(lm.meta)) else None,
            "device": lm.device,
            "precision": "fp32" if self.int8_fallback and lm.precision == "int8" else lm.precision,
            "runtime": lm.runtime,
            "runtime_requested": lm.runtime_choice.requested if lm.runtime_choice else lm.runtime,
            "runtime_reason": lm.runtime_choice.reason if lm.runtime_choice else "",
            "runtime_fallback": lm.runtime_fallback or self.int8_fallback,
            "runtime_threads": lm.threads,
            "runtime_export_s": dict(lm.export_s),
            "int8": self.int8_report,
            "prompt_mode": self.prompt_mode,
            "prompt": self.words,
            "official_test_prompts": self.official_test_prompts,
            "tagger": self.tagger.describe() if self.tagger is not None else None,
            "text_cache": self.cache.stats(),
            "tiles": self.tiles_seen,
        }
        if self.prompt_mode != "auto":
            info["prompts"] = list(build_prompts([], self.words))
        else:
            info["top_tags"] = dict(self.tag_counts.most_common(10))
        return info
