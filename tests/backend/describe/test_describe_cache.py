"""The describe encoder kept between jobs (the server's describe cache), with real tiny CLIP weights.

Jobs run through the real pipeline (IR-MAD, polygons, ``--describe`` with seeded random CLIP
weights in open_clip) against a real :class:`ModelCache`; loads are counted by the cache's own
misses and listing, never by time.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from geodata import write_raster
from osgeo import ogr

from changeclip import pipeline
from changeclip.describe.loading import describe_key, load_describer
from changeclip.inference.cache import ModelCache
from changeclip.protocol import DetectParams

NAMES = ["building", "forest", "water", "bare land"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A 96 px pair with two changed squares, a 4-name vocabulary and two tiny CLIP weights files."""
    from safetensors.torch import save_file

    from changeclip.model.tagger import random_clip_state_dict

    folder = tmp_path_factory.mktemp("describe_cache")
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:96, 0:96].astype(np.float64)
    before = np.stack([110 + 50 * np.sin(x / 13 + b) * np.cos(y / 19 - b) for b in range(3)])
    before = np.clip(before + rng.normal(0, 3, before.shape), 0, 255)
    after = before.copy()
    after[:, 20:44, 20:44] = np.array([220, 40, 40])[:, None, None]
    after[:, 60:80, 50:76] = np.array([40, 60, 200])[:, None, None]
    gt = (500000.0, 2.0, 0.0, 4500000.0, 0.0, -2.0)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    paths = {"before": write_raster(folder / "before.tif", before.astype(np.uint8), gt=gt, epsg=32633),
             "after": write_raster(folder / "after.tif", after.astype(np.uint8), gt=gt, epsg=32633),
             "vocabulary": str(vocab)}
    for seed in (0, 1):
        path = folder / f"clip_seed{seed}.safetensors"
        save_file(random_clip_state_dict(seed=seed, tiny=True), str(path))
        paths[f"clip{seed}"] = str(path)
    return paths


def _params(scene: dict[str, str], out: Path, weights: str, **kw: object) -> DetectParams:
    return DetectParams(scene["before"], scene["after"], str(out), engine="irmad", tile=64, overlap=16,
                        polygons=True, min_area=100.0, describe=True, describe_weights=weights,
                        **{"vocabulary": scene["vocabulary"], "query": "forest to building", **kw})  # type: ignore[arg-type]


def _attributes(out: Path) -> list[dict]:
    """Every polygon's attributes but the time of the run."""
    ds = ogr.Open(str(out / "change_polygons.gpkg"))
    return [{k: v for k, v in f.items().items() if k != "detected_at"} for f in ds.GetLayer(0)]


def _describe_info(summary: dict) -> dict:
    return {k: v for k, v in summary["describe"].items() if k != "seconds"}


def test_two_jobs_load_clip_once_and_match_the_uncached_run(scene: dict[str, str], tmp_path: Path) -> None:
    cache = ModelCache(max_entries=2)
    first = pipeline.run_detection(_params(scene, tmp_path / "one", scene["clip0"]), describe_cache=cache)
    second = pipeline.run_detection(_params(scene, tmp_path / "two", scene["clip0"]), describe_cache=cache)
    assert (cache.misses, cache.hits) == (1, 1)  # the factory (the load) ran once; the second job hit
    [entry] = cache.entries()
    assert entry["key"][0] == "describe" and os.path.abspath(scene["clip0"]) in entry["key"]
    loaded = load_describer(scene["clip0"], None, "cpu", cache)  # the same object the jobs used
    assert (loaded.banks.misses, loaded.banks.hits) == (1, 1)  # the vocabulary was embedded once too
    uncached = pipeline.run_detection(_params(scene, tmp_path / "plain", scene["clip0"]))
    attrs = _attributes(tmp_path / "one")
    assert attrs, "IR-MAD found no change polygon to describe"
    assert {a["change_label"] for a in attrs} and all(a["before_class"] in NAMES for a in attrs)
    assert attrs == _attributes(tmp_path / "two") == _attributes(tmp_path / "plain")
    assert _describe_info(first) == _describe_info(second) == _describe_info(uncached)


def test_another_query_or_vocabulary_reuses_the_encoder_but_not_the_words(scene: dict[str, str],
                                                                          tmp_path: Path) -> None:
    cache = ModelCache(max_entries=2)
    pipeline.run_detection(_params(scene, tmp_path / "q1", scene["clip0"]), describe_cache=cache)
    other = pipeline.run_detection(_params(scene, tmp_path / "q2", scene["clip0"], query="water"),
                                   describe_cache=cache)
    assert (cache.misses, cache.hits) == (1, 1)
    loaded = load_describer(scene["clip0"], None, "cpu", cache)
    assert loaded.banks.misses == 2
    plain = pipeline.run_detection(_params(scene, tmp_path / "q3", scene["clip0"], query="water"))
    assert _attributes(tmp_path / "q2") == _attributes(tmp_path / "q3")
    assert _describe_info(other) == _describe_info(plain)
    # the same names from another file: the embeddings are reused, the summary names this job's file
    same = tmp_path / "same_names.txt"
    same.write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    renamed = pipeline.run_detection(_params(scene, tmp_path / "q4", scene["clip0"], query="water",
                                             vocabulary=str(same)), describe_cache=cache)
    assert loaded.banks.misses == 2 and str(same) in renamed["describe"]["vocabulary"]["source"]
    assert _attributes(tmp_path / "q4") == _attributes(tmp_path / "q3")
    # other names: embedded anew
    fewer = tmp_path / "fewer.txt"
    fewer.write_text("building\nwater\n", encoding="utf-8")
    pipeline.run_detection(_params(scene, tmp_path / "q5", scene["clip0"], query="water", vocabulary=str(fewer)),
                           describe_cache=cache)
    assert loaded.banks.misses == 3
    assert {a["after_class"] for a in _attributes(tmp_path / "q5")} <= {"building", "water"}


def test_the_key_changes_with_everything_that_changes_the_model(scene: dict[str, str], tmp_path: Path) -> None:
    a, b = scene["clip0"], scene["clip1"]
    base = describe_key(a, None, "cpu")
    assert len({base, describe_key(b, None, "cpu"), describe_key(a, "ViT-B-32", "cpu"),
                describe_key(a, None, "cuda:0"), describe_key(None, None, "cpu")}) == 5
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(Path(a).read_bytes())
    st = os.stat(copy)
    before = describe_key(copy, None, "cpu")
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # the file was replaced in place
    assert describe_key(copy, None, "cpu") != before
    assert base[-1] == "fp32"


def test_another_weights_file_is_another_entry_and_the_bound_evicts(scene: dict[str, str], tmp_path: Path) -> None:
    two = ModelCache(max_entries=2)
    pipeline.run_detection(_params(scene, tmp_path / "a", scene["clip0"]), describe_cache=two)
    pipeline.run_detection(_params(scene, tmp_path / "b", scene["clip1"]), describe_cache=two)
    assert two.misses == 2 and len(two) == 2
    assert [os.path.abspath(scene[k]) in e["key"] for k, e in zip(("clip0", "clip1"), two.entries(), strict=True)] \
        == [True, True]
    one = ModelCache(max_entries=1)
    pipeline.run_detection(_params(scene, tmp_path / "c", scene["clip0"]), describe_cache=one)
    pipeline.run_detection(_params(scene, tmp_path / "d", scene["clip1"]), describe_cache=one)
    [entry] = one.entries()
    assert os.path.abspath(scene["clip1"]) in entry["key"]  # clip0's encoder was evicted
    pipeline.run_detection(_params(scene, tmp_path / "e", scene["clip0"]), describe_cache=one)
    assert one.misses == 3 and one.hits == 0
    assert _attributes(tmp_path / "e") == _attributes(tmp_path / "c")  # reloaded after eviction: same words


def test_a_missing_weights_file_is_the_encoders_error_and_caches_nothing(scene: dict[str, str],
                                                                       tmp_path: Path) -> None:
    from changeclip.errors import ModelError

    cache = ModelCache(max_entries=2)
    with pytest.raises(ModelError, match="CLIP weights file"):
        pipeline.run_detection(_params(scene, tmp_path / "out", str(tmp_path / "nope.safetensors")),
                               describe_cache=cache)
    assert len(cache) == 0 and not (tmp_path / "out").exists()
