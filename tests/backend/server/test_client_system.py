"""Client error mapping, the submit command's options, and the GPU memory bound (faked CUDA)."""

from __future__ import annotations

import argparse
import socket
from typing import Any

import pytest

from changeclip.client import ChangeClipClient, ServerUnavailable
from changeclip.errors import InputError
from changeclip.server.system import SystemInfo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_server_is_server_unavailable() -> None:
    client = ChangeClipClient(f"http://127.0.0.1:{_free_port()}", "x" * 20, timeout_s=5)
    with pytest.raises(ServerUnavailable, match="is 'changeclip serve' running"):
        client.status()
    assert client.live() is False


def test_bad_url_is_input_error() -> None:
    with pytest.raises(InputError, match="http://"):
        ChangeClipClient("file:///etc/passwd", "x" * 20)


def test_submit_has_every_detect_option() -> None:
    from changeclip.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    detect = {o for a in sub.choices["detect"]._actions for o in a.option_strings}
    submit = {o for a in sub.choices["submit"]._actions for o in a.option_strings}
    assert detect <= submit
    assert {"--url", "--token-file", "--wait", "--timeout", "--json"} <= submit
    help_text = sub.choices["submit"].format_help()
    for option in detect | {"--url", "--token-file", "--wait", "--timeout", "BEFORE", "AFTER"}:
        assert option in help_text
    assert "with --wait: progress as JSON lines" in help_text  # submit's own --json, not detect's


class _Cache:
    def __init__(self) -> None:
        self.cleared = 0

    def clear(self) -> None:
        self.cleared += 1


def test_memory_bound_unloads_models_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    class Props:
        total_memory = 80 * 2**30

    allocated = {"bytes": 10 * 2**30}
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated["bytes"])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Props())
    system, cache = SystemInfo(), _Cache()
    assert not system.enforce_memory_bound(cache, "cpu", 1.0)          # CPU jobs are not bounded
    assert not system.enforce_memory_bound(cache, "cuda:0", None)      # 10 GiB <= 75 % of 80 GiB
    assert system.enforce_memory_bound(cache, "cuda:0", 8.0)           # 10 GiB > 8 GiB
    allocated["bytes"] = 70 * 2**30
    assert system.enforce_memory_bound(cache, "cuda:0", None)          # 70 GiB > 60 GiB
    assert cache.cleared == 2


def test_runner_applies_the_bound_after_failed_jobs_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import changeclip.pipeline
    from changeclip.protocol import DetectParams
    from changeclip.server.app import _pipeline_runner

    calls: list[Any] = []

    class System:
        def enforce_memory_bound(self, cache: Any, device: str, max_gb: float | None) -> bool:
            calls.append((device, max_gb))
            return False

    def boom(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(changeclip.pipeline, "run_detection", boom)
    run = _pipeline_runner(_Cache(), System(), 12.0)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        run(DetectParams(before="/b", after="/a", output_dir="/o", device="cuda:0"), lambda *a: None, lambda: False)
    assert calls == [("cuda:0", 12.0)]


def test_runner_bounds_the_describe_cache_after_the_model_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import changeclip.pipeline
    from changeclip.protocol import DetectParams
    from changeclip.server.app import _pipeline_runner

    models, describe = _Cache(), _Cache()
    calls: list[Any] = []
    passed: dict[str, Any] = {}

    class System:
        def enforce_memory_bound(self, cache: Any, device: str, max_gb: float | None) -> bool:
            calls.append(cache)
            cache.clear()
            return True

    def record(params: Any, **kwargs: Any) -> dict[str, Any]:
        passed.update(kwargs)
        return {}

    monkeypatch.setattr(changeclip.pipeline, "run_detection", record)
    run = _pipeline_runner(models, System(), 12.0, describe_cache=describe)  # type: ignore[arg-type]
    run(DetectParams(before="/b", after="/a", output_dir="/o", device="cuda:0"), lambda *a: None, lambda: False)
    assert passed["cache"] is models and passed["describe_cache"] is describe
    assert calls == [models, describe] and models.cleared == describe.cleared == 1
