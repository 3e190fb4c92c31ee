"""The bounded LRU model cache."""

from __future__ import annotations

import threading

import pytest

from changeclip.inference.cache import ModelCache


def test_lru_eviction_and_entries() -> None:
    cache = ModelCache(max_entries=2)
    made: list[str] = []

    def factory(name: str):
        def make() -> dict[str, str]:
            made.append(name)
            return {"name": name}
        return make

    a = cache.get(("a", 1), factory("a"))
    assert cache.get(("a", 1), factory("a")) is a
    cache.get(("b",), factory("b"))
    cache.get(("a", 1), factory("a"))  # a is now most recent
    cache.get(("c",), factory("c"))  # evicts b
    assert made == ["a", "b", "c"]
    assert [e["key"] for e in cache.entries()] == [["a", "1"], ["c"]]
    cache.get(("b",), factory("b"))
    assert made[-1] == "b" and len(cache) == 2
    assert (cache.hits, cache.misses) == (2, 4)
    cache.clear()
    assert len(cache) == 0 and cache.entries() == []


def test_factory_runs_once_under_concurrency() -> None:
    cache = ModelCache(max_entries=1)
    calls = []

    def make() -> object:
        calls.append(1)
        return object()

    threads = [threading.Thread(target=cache.get, args=(("k",), make)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_invalid_size() -> None:
    with pytest.raises(ValueError):
        ModelCache(max_entries=0)
