"""A small, thread-safe LRU cache of loaded models, shared by the jobs of one server process.

Loading ChangeCLIP weights takes seconds and hundreds of MB; jobs with the same weights,
variant, device and precision reuse the loaded model. The cache holds at most ``max_entries``
objects; evicting one drops the last reference and, when it lived on a CUDA device, releases
PyTorch's cached GPU memory so another model fits.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger(__name__)


class ModelCache:
    """Bounded least-recently-used cache keyed by tuples.

    Args:
        max_entries: How many objects to keep (>= 1).
    """

    def __init__(self, max_entries: int = 2) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._items: OrderedDict[tuple[Hashable, ...], tuple[Any, float]] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[Hashable, ...], factory: Callable[[], Any]) -> Any:
        """The cached object for ``key``, created with ``factory()`` on a miss.

        The factory runs under the cache's lock, so two jobs never load the same model twice.
        """
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            self.misses += 1
            while len(self._items) >= self.max_entries:
                self._evict_oldest()
            obj = factory()
            self._items[key] = (obj, time.time())
            return obj

    def entries(self) -> list[dict[str, Any]]:
        """What is loaded, oldest first: ``[{"key": [...], "loaded_at": epoch_s}, ...]``."""
        with self._lock:
            return [{"key": [str(k) for k in key], "loaded_at": t} for key, (_, t) in self._items.items()]

    def clear(self) -> None:
        """Drop every entry (and free GPU memory)."""
        with self._lock:
            while self._items:
                self._evict_oldest()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _evict_oldest(self) -> None:
        key, (obj, _) = self._items.popitem(last=False)
        log.info("model cache: evicting %s", key)
        del obj
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
