"""Describe jobs through a real ``changeclip serve`` process keep one CLIP encoder loaded.

The server runs with ``--max-models 1``; jobs are IR-MAD with ``describe`` on seeded random tiny
CLIP weights. What is loaded is read from the server's own ``/v1/status`` listing (``loaded_at``
stays the same while an entry is reused), never inferred from timing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from osgeo import ogr

from .conftest import LiveServer, make_pair, start_server_process, stop_server_process

pytestmark = pytest.mark.server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    srv = start_server_process(tmp_path, "--max-models", "1")
    try:
        yield srv
    finally:
        stop_server_process(srv)


def _describe_entries(server: LiveServer) -> list[dict[str, Any]]:
    return [e for e in server.client.status()["loaded_models"] if e["key"][0] == "describe"]


def _attributes(gpkg: str) -> list[dict[str, Any]]:
    ds = ogr.Open(gpkg)
    return [{k: v for k, v in f.items().items() if k != "detected_at"} for f in ds.GetLayer(0)]


def test_describe_jobs_reuse_the_encoder_and_the_bound_evicts_it(server: LiveServer, tmp_path: Path,
                                                                  tiny_weights: Any) -> None:
    from safetensors.torch import save_file

    from changeclip.model.tagger import random_clip_state_dict

    before, after = make_pair(tmp_path / "rasters", 96)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("building\nforest\nwater\nbare land\n", encoding="utf-8")
    weights = {}
    for seed in (0, 1):
        weights[seed] = str(tmp_path / f"clip{seed}.safetensors")
        save_file(random_clip_state_dict(seed=seed, tiny=True), weights[seed])

    def job(name: str, seed: int, **kw: Any) -> dict[str, Any]:
        info = server.client.submit({"before": before, "after": after, "output_dir": str(tmp_path / name),
                                     "engine": "irmad", "tile": 64, "overlap": 16, "device": "cpu",
                                     "polygons": True, "describe": True, "describe_weights": weights[seed],
                                     "vocabulary": str(vocab), "query": "building", **kw})
        final = server.client.wait(info.job_id, poll_s=0.2, timeout_s=300)
        assert final.state == "succeeded", final.error
        return server.client.result(info.job_id)["summary"]

    first = job("one", 0)
    [loaded] = _describe_entries(server)
    assert os.path.abspath(weights[0]) in loaded["key"] and loaded["key"][-1] == "fp32"
    second = job("two", 0)
    assert _describe_entries(server) == [loaded]  # the same entry, loaded_at unchanged: CLIP was loaded once
    one, two = _attributes(first["outputs"]["polygons"]), _attributes(second["outputs"]["polygons"])
    assert one and one == two
    assert first["describe"]["query"] == second["describe"]["query"]
    job("three", 1)  # other weights: another entry, and --max-models 1 evicts the first
    [other] = _describe_entries(server)
    assert os.path.abspath(weights[1]) in other["key"] and os.path.abspath(weights[0]) not in other["key"]
    # the describe cache is a sibling of the detection model cache, each bounded by --max-models: a
    # ChangeCLIP job with describe keeps its network loaded next to the describe encoder
    cc = str(tiny_weights("tiny-rn50"))
    job("four", 1, engine="changeclip", weights=cc, prompt_mode="none", overlap=0)
    models = server.client.status()["loaded_models"]
    assert [e["key"][0] for e in models] == ["changeclip", "describe"] and cc in models[0]["key"], models
    assert _describe_entries(server) == [other]  # reused across engines: same weights, device, precision
