"""The benchmark suite: the naive baseline computes the same network, and a miniature run
produces every section of the report (timings are recorded, never asserted)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from changeclip.bench import suite
from changeclip.bench.common import random_pairs, seeded_model
from changeclip.bench.end_to_end import write_synthetic_pair
from changeclip.bench.naive import NaivePredictor, naive_geotiff_detect
from changeclip.cli import main
from changeclip.inference.predictor import ChangeCLIPPredictor


def test_naive_baseline_is_the_same_network() -> None:
    lm = seeded_model("tiny-rn50", "cpu", "fp32")
    a, b = random_pairs(2, 64, seed=5)
    fast = ChangeCLIPPredictor(lm, "none", batch_size=2).predict_logits(a, b)
    slow = NaivePredictor(lm).predict_logits(a, b)
    diff = float(np.abs(fast - slow).max())
    assert diff < 1e-4 * max(1.0, float(np.abs(fast).max())), f"max diff {diff}"


def test_naive_geotiff_covers_the_grid(tmp_path: Path) -> None:
    before, after = write_synthetic_pair(tmp_path, 112, seed=2)
    naive = NaivePredictor(seeded_model("tiny-rn50", "cpu", "fp32"))
    out = tmp_path / "naive.tif"
    tiles = naive_geotiff_detect(naive, before, after, out, tile=64, overlap=16)
    assert tiles == 4  # origins 0, 48 per axis
    ds, src = gdal.Open(str(out)), gdal.Open(str(before))
    assert (ds.RasterXSize, ds.RasterYSize) == (112, 112)
    assert ds.GetGeoTransform() == src.GetGeoTransform()
    assert ds.ReadAsArray().max() <= 100


def test_cli_bench_miniature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    mini = dataclasses.replace(suite.PROFILES["quick"], net_size=64, e2e_size=256, e2e_naive_size=256,
                               e2e_batch=2, hit_rate_tiles=4, irmad_size=128, host_size=256, describe_size=256,
                               runtimes=["onnxruntime:fp32"], e2e_runtimes=["onnxruntime:int8"])
    monkeypatch.setitem(suite.PROFILES, "quick", mini)
    out = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rep = json.loads(out.read_text())
    naive, opt, ort = rep["network"]
    assert naive["mode"] == "naive" and opt["mode"] == "optimised"
    assert opt["speedup_vs_naive"] == pytest.approx(opt["pairs_per_s"] / naive["pairs_per_s"])
    assert (opt["runtime"], ort["runtime"], ort["precision"]) == ("torch", "onnxruntime", "fp32")
    assert ort["speedup_vs_naive"] == pytest.approx(ort["pairs_per_s"] / naive["pairs_per_s"])
    assert rep["environment"]["runtimes"]["onnxruntime"] and "vector extensions:" in printed.out
    assert opt["text_cache"]["misses"] == 2  # constant prompts: encoded once, then looked up
    assert {r["prompt_mode"] for r in rep["text_cache_hit_rate"]} == {"none", "words"}
    none = next(r for r in rep["text_cache_hit_rate"] if r["prompt_mode"] == "none")
    assert none["hits"] == 2 and none["misses"] == 2  # 2 calls x (background, foreground)
    paths = [(r["variant"], r["path"]) for r in rep["end_to_end"]]
    assert paths == [("tiny-rn50", "naive"), ("tiny-rn50", "pipeline"), ("tiny-rn50", "pipeline"), ("irmad", "pipeline"),
                     ("no-op engine", "pipeline")]
    assert all(r["mpix_per_s"] > 0 for r in rep["end_to_end"])
    fp32, int8 = rep["end_to_end"][1:3]
    assert (fp32["precision"], fp32["once_s"]) == ("fp32", 0.0)
    # int8's calibration on the pair is a fixed cost: shown apart, left out of the rate
    assert (int8["runtime"], int8["precision"]) == ("onnxruntime", "int8") and int8["once_s"] > 0
    assert int8["once_s"] == int8["timings_s"]["calibrating"]
    assert int8["mpix_per_s"] == pytest.approx(256 * 256 / 1e6 / (int8["seconds"] - int8["once_s"]))
    assert "once s" in printed.out
    ceiling = rep["end_to_end"][-1]
    assert ceiling["tiles"] == 4 and ceiling["tile_stage_pairs_per_s"] >= ceiling["pairs_per_s"] > 0
    (described,) = rep["describe"]
    assert described["clip"] == "tiny" and described["polygons"] > 0 and described["polygons_per_s"] > 0
    assert 0 < described["share_of_detection"] < 1
    assert "Describing change polygons" in printed.out
    (train,) = rep["training"]  # one optimizer step of the tiny network, with its own peak RSS
    assert (train["variant"], train["batch"], train["precision"], train["size"]) == ("tiny-rn50", 2, "fp32", 64)
    assert train["pairs_per_s"] > 0 and train["peak_rss_mib"] > 0 and train["gpu_peak_mib"] is None
    assert "Training throughput" in printed.out
    assert rep["memory"]["peak_host_rss_mib"] > 0
    assert rep["environment"]["torch"] and rep["environment"]["device"] == "cpu"
    assert printed.out.rstrip().splitlines()[-1].startswith("peak host RSS")


def test_stream_loop_matches_naive_loop(tmp_path: Path) -> None:
    from changeclip.bench.stream import naive_detect_io, stream_detect

    before, after = write_synthetic_pair(tmp_path, 96, seed=4)
    lm = seeded_model("tiny-rn50", "cpu", "fp32")
    n1 = naive_detect_io(NaivePredictor(lm), before, after, tmp_path / "naive.tif", tile=64, overlap=16)
    n2 = stream_detect(ChangeCLIPPredictor(lm, "none", batch_size=4), before, after, tmp_path / "stream.tif",
                       tile=64, overlap=16, batch=4, readers=2)
    assert n1 == n2 == 4
    a = gdal.Open(str(tmp_path / "naive.tif")).ReadAsArray().astype(int)
    b = gdal.Open(str(tmp_path / "stream.tif")).ReadAsArray().astype(int)
    assert np.abs(a - b).max() <= 1  # same network; percent rounding only
    assert gdal.Open(str(tmp_path / "stream.tif")).GetGeoTransform() == gdal.Open(str(before)).GetGeoTransform()
