"""What the server reports about its machine, and how it picks a job's device.

Thin adapter over :mod:`changeclip.inference.devices` and
:mod:`changeclip.inference.cache`, imported lazily so that the server starts (and
prints its handshake) before torch is imported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from changeclip.server.settings import ServerSettings


class ModelCacheLike(Protocol):
    """The part of :class:`changeclip.inference.cache.ModelCache` the server uses."""

    def get(self, key: tuple[Any, ...], factory: Callable[[], Any]) -> Any:
        """Cached object for ``key``, made by ``factory`` on a miss."""
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
        import torch

        return bool(torch.cuda.is_available())

    def new_cache(self, settings: ServerSettings) -> ModelCacheLike:
        """The model cache for all jobs, bounded by the settings."""
        from changeclip.inference.cache import ModelCache

        return ModelCache(max_items=settings.max_models)

    def loaded_models(self, cache: ModelCacheLike | None) -> list[dict[str, Any]]:
        """One entry per model in the cache (key fields and, where known, memory)."""
        if cache is None:
            return []
        describe = getattr(cache, "describe", None)
        if describe is None:
            return []
        return list(describe())
