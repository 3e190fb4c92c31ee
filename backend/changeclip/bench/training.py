"""Training throughput: pairs/s of one optimizer step per variant × batch × precision, with memory.

One step is what ``changeclip train`` does per iteration with accumulate 1: normalised 6-channel
crops, the text side with gradients (constant prompts), forward under the precision's autocast,
cross-entropy with 255 ignored, backward (fp16: through a grad scaler), AdamW step, on a network
in train mode (seeded random weights, channels-last for RN50). The data loader is not part of
it (random tensors already on the device). Peak memory per row: the host RSS sampled every 5 ms
during the timed steps (psutil) and, on CUDA, torch's peak allocated GPU memory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

from changeclip.bench.common import gpu_peak_mib, median, reset_gpu_peak, sync, time_calls

log = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class RssSampler:
    """Highest resident set size of this process seen while active (sampled every ``period_s``)."""

    def __init__(self, period_s: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._period = period_s
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._period)

    def __enter__(self) -> RssSampler:
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mib(self) -> float:
        """The peak in MiB."""
        return self.peak / 2**20


def _step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: Any, loss_fn: torch.nn.Module,
             x: torch.Tensor, y: torch.Tensor, tokens: torch.Tensor,
             autocast: contextlib.AbstractContextManager[Any]) -> Callable[[], None]:
    """One training step on fixed inputs, as a function of nothing (for the timer)."""

    def step() -> None:
        with autocast:
            logits = model(x, tokens, None, None)
        loss = loss_fn(logits, y)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_training(variant: str, device: str, batches: list[int], precisions: list[str], reps: int = 3,
                   size: int = 256) -> list[dict[str, Any]]:
    """Time training steps of one variant.

    Args:
        variant: preset name.
        device: ``cpu`` / ``cuda:N``.
        batches: tiles per step.
        precisions: ``fp32`` / ``bf16`` / ``fp16`` (fp16 only on CUDA; skipped on the CPU).
        reps: timed steps per configuration (median reported; one warm-up step before).
        size: crop side in px.

    Returns:
        One row per configuration: pairs_per_s (median), pairs_per_s_best, step_ms,
        peak_rss_mib, gpu_peak_mib (None on the CPU), and out_of_memory when a step did not fit.
    """
    from changeclip.model import build_model_from_state_dict
    from changeclip.model.config import PRESETS
    from changeclip.model.prompts import build_prompts, tokenize
    from changeclip.training.loop import StepModule
    from changeclip.training.recipe import SegmentationLoss, build_optimizer
    from changeclip.training.start import seeded_init

    cfg = PRESETS[variant]
    rows: list[dict[str, Any]] = []
    net = build_model_from_state_dict(cfg, seeded_init(cfg, 0), device=device).train()  # one build per variant
    if cfg.backbone == "rn50":
        net = net.to(memory_format=torch.channels_last)
    model = StepModule(net)
    for precision in precisions:
        if precision == "fp16" and not device.startswith("cuda"):
            continue
        for batch in batches:
            opt = build_optimizer(net, 1e-4, 0.01, fused=device.startswith("cuda"))
            scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
            loss_fn = SegmentationLoss().to(device)
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(batch, 6, size, size, generator=gen).to(device)
            if cfg.backbone == "rn50":
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 2, (batch, size, size), generator=gen).to(device)
            tokens = tokenize(list(build_prompts([], ""))).to(device)
            autocast = (contextlib.nullcontext() if precision == "fp32" else
                        torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision]))

            step = _step_fn(model, opt, scaler, loss_fn, x, y, tokens, autocast)

            reset_gpu_peak(device)
            row: dict[str, Any] = {"variant": variant, "batch": batch, "precision": precision, "size": size,
                                   "device": device}
            try:
                with RssSampler() as rss:
                    times = time_calls(step, device, reps, warmup=1)
                sync(device)
                row.update(pairs_per_s=batch / median(times), pairs_per_s_best=batch / min(times),
                           step_ms=1000 * median(times), peak_rss_mib=rss.peak_mib, gpu_peak_mib=gpu_peak_mib(device),
                           reps=reps)
            except torch.OutOfMemoryError:
                row.update(out_of_memory=True, gpu_peak_mib=gpu_peak_mib(device))
            log.info("training %s batch %d %s: %s", variant, batch, precision,
                     f"{row.get('pairs_per_s', 0):.2f} pairs/s" if "pairs_per_s" in row else "out of memory")
            rows.append(row)
            del step, opt, x, y
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows
