"""What the server reports about its machine, and how it picks a job's device.

Thin adapter over :mod:`changeclip.inference.devices` and
:mod:`changeclip.inference.cache`, imported lazily so that the server starts (and
prints its handshake) before torch is imported.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from changeclip.server.settings import ServerSettings


log = logging.getLogger(__name__)

_DEFAULT_GPU_FRACTION = 0.75
"""Default bound on the GPU memory cached models may hold, as a fraction of the device's."""


class ModelCacheLike(Protocol):
    """The part of :class:`changeclip.inference.cache.ModelCache` the server uses."""

    def get(self, key: tuple[Any, ...], factory: Callable[[], Any]) -> Any:
        """Cached object for ``key``, made by ``factory`` on a miss."""
        ...

    def entries(self) -> list[dict[str, Any]]:
        """What is loaded, oldest first."""
        ...

    def clear(self) -> None:
        """Unload everything (and free GPU memory)."""
        ...


class SystemInfo:
    """Devices, CUDA availability and the model cache, for ``/v1/status`` and job routing.

    Args:
        default_device: device for jobs that ask for ``auto`` (``auto`` itself picks
            the first CUDA device if there is one, else the CPU).
    """

    def __init__(self, default_device: str = "auto") -> None:
        self._default_request = default_device
        self._default: str | None = None
        self._lock = threading.Lock()

    def resolve_device(self, device: str) -> str:
        """Concrete device (``cpu``, ``cuda:N``) for a job's ``device`` parameter.

        Raises:
            ChangeClipError: the device does not exist on this machine.
        """
        from changeclip.inference.devices import resolve_device

        if device == "auto":
            with self._lock:
                if self._default is None:
                    self._default = resolve_device(self._default_request)
                return self._default
        return resolve_device(device)

    def devices(self) -> list[dict[str, Any]]:
        """Every usable device with its name and memory."""
        from changeclip.inference.devices import list_devices

        return list_devices()

    def cuda_available(self) -> bool:
        """Whether torch sees a CUDA device."""
        from changeclip.inference.devices import cuda_available

        return cuda_available()

    def enforce_memory_bound(self, cache: ModelCacheLike, device: str, max_gb: float | None) -> bool:
        """Empty the model cache if the models on ``device`` hold more GPU memory than allowed.

        Called after every job (when only the cached models remain allocated).

        Args:
            cache: the model cache.
            device: the job's device; only ``cuda:N`` devices are checked.
            max_gb: the bound in GiB; ``None``: 75 % of the device's memory.

        Returns:
            True if the cache was emptied.
        """
        if not device.startswith("cuda"):
            return False
        import torch

        allocated = int(torch.cuda.memory_allocated(device))
        bound = (max_gb * 2**30 if max_gb is not None
                 else _DEFAULT_GPU_FRACTION * torch.cuda.get_device_properties(device).total_memory)
        if allocated <= bound:
            return False
        log.warning("cached models hold %.2f GiB on %s, over the bound of %.2f GiB: unloading them",
                    allocated / 2**30, device, bound / 2**30)
        cache.clear()
        return True

    def new_cache(self, settings: ServerSettings) -> ModelCacheLike:
        """The model cache for all jobs, bounded by the settings."""
        from changeclip.inference.cache import ModelCache

        return ModelCache(max_entries=settings.max_models)

    def new_describe_cache(self, settings: ServerSettings) -> ModelCacheLike:
        """The cache of describe CLIP encoders for all jobs (:mod:`changeclip.describe.loading`): a
        sibling of :meth:`new_cache` with the same entry bound, so that a describe job does not evict
        the detection model (and tagger) the next job needs."""
        from changeclip.inference.cache import ModelCache

        return ModelCache(max_entries=settings.max_models)

    def loaded_models(self, cache: ModelCacheLike | None) -> list[dict[str, Any]]:
        """One entry per model in the cache: its key fields and when it was loaded."""
        return [] if cache is None else list(cache.entries())
