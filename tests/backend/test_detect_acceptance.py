"""Acceptance on the georeferenced sample pairs (../shared/data/geotiff), both engines; seam quality.

Reads the research-only imagery by path (never copied). ChangeCLIP runs with the seeded tiny
weights (random: the change maps mean nothing, the georeferencing and the plumbing do).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from changeclip.engines import build_engine
from changeclip.pipeline import run_detection
from changeclip.protocol import MASK_NAME, POLYGONS_NAME, PROBABILITY_NAME, SUMMARY_KEYS, DetectParams
from changeclip.raster.tiling import pad_to_tile, tile_starts

log = logging.getLogger(__name__)

PAIRS = {
    "taizhou": ("ChenHongruixuan_ChangeDetectionRepository/Taizhou/2000TM",
                "ChenHongruixuan_ChangeDetectionRepository/Taizhou/2003TM"),
    "naip": ("opengeos_data/naip/m_4709963_se_14_1_20150926.tif", "opengeos_data/naip/m_4709963_se_14_1_20200831.tif"),
    "dymaxion": ("dymaxionlabs_massive-change-detection/before.tif", "dymaxionlabs_massive-change-detection/after.tif"),
}
RUNS = [(pair, "irmad") for pair in PAIRS] + [
    pytest.param((pair, "changeclip"), marks=pytest.mark.slow) for pair in PAIRS]


@pytest.fixture(scope="module")
def geotiff_dir(data_dir: Path) -> Path:
    path = data_dir / "geotiff"
    if not path.is_dir():
        pytest.fail(f"sample rasters not found at {path}; set CHANGECLIP_SHARED_DIR")
    return path


@pytest.fixture(scope="module", params=RUNS, ids=lambda r: f"{r[0]}-{r[1]}" if isinstance(r, tuple) else str(r))
def run(request: pytest.FixtureRequest, geotiff_dir: Path, tiny_weights: Any,
        tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pair, engine = request.param
    before, after = (str(geotiff_dir / p) for p in PAIRS[pair])
    out = tmp_path_factory.mktemp(f"{pair}-{engine}")
    extra: dict[str, Any] = {}
    if engine == "changeclip":
        extra = {"weights": str(tiny_weights("tiny-rn50")), "prompt_mode": "none", "device": "cpu"}
    params = DetectParams(before, after, str(out), engine=engine, polygons=True, min_pixels=0,
                          **extra)  # min_pixels 0: every change pixel is in a polygon (checked below)
    return {"pair": pair, "engine": engine, "before": before, "after": after, "out": out,
            "summary": run_detection(params)}


def test_outputs_on_reference_grid(run: dict[str, Any]) -> None:
    ref = gdal.Open(run["before"])
    ref_srs = osr.SpatialReference(wkt=ref.GetProjection())
    for name in (MASK_NAME, PROBABILITY_NAME):
        ds = gdal.Open(str(run["out"] / name))
        assert (ds.RasterXSize, ds.RasterYSize) == (ref.RasterXSize, ref.RasterYSize)
        assert ds.GetGeoTransform() == pytest.approx(ref.GetGeoTransform(), abs=1e-9)
        assert osr.SpatialReference(wkt=ds.GetProjection()).IsSame(ref_srs)
        assert gdal.Info(ds, format="json")["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
    mask = gdal.Open(str(run["out"] / MASK_NAME)).ReadAsArray()
    assert set(np.unique(mask).tolist()) <= {0, 1, 255}
    s = run["summary"]
    assert set(SUMMARY_KEYS) <= set(s) and s["engine"] == run["engine"]
    assert s["valid_pixels"] > 0 and 0 <= s["changed_fraction"] <= 1
    if run["engine"] == "changeclip":
        assert len(s["model"]["weights_sha256"]) == 64 and s["model"]["random_weights"] is True
    if run["pair"] == "naip":
        assert s["inputs"]["warped"] == {"before": False, "after": True}, "the 1 m shifted 2020 grid is warped"


def test_polygons_overlay_mask(run: dict[str, Any]) -> None:
    mask_ds = gdal.Open(str(run["out"] / MASK_NAME))
    mask = mask_ds.ReadAsArray()
    mem = gdal.GetDriverByName("MEM").Create("", mask_ds.RasterXSize, mask_ds.RasterYSize, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(mask_ds.GetGeoTransform())
    mem.SetProjection(mask_ds.GetProjection())
    vec = ogr.Open(str(run["out"] / POLYGONS_NAME))
    layer = vec.GetLayer(0)
    assert layer.GetFeatureCount() == run["summary"]["polygons"]["count"]
    gdal.RasterizeLayer(mem, [1], layer, burn_values=[1])
    np.testing.assert_array_equal(mem.ReadAsArray() == 1, mask == 1)
    total = sum(f.GetField("area_m2") for f in layer)
    assert total == pytest.approx(run["summary"]["changed_area_m2"], rel=1e-6, abs=1e-6)


def test_taizhou_irmad_accuracy_is_reported(geotiff_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """IR-MAD against Taizhou's sparse reference masks: reported, not asserted."""
    folder = geotiff_dir / "ChenHongruixuan_ChangeDetectionRepository/Taizhou"
    run_detection(DetectParams(str(folder / "2000TM"), str(folder / "2003TM"), str(tmp_path), engine="irmad",
                               bands=[1, 2, 3, 4, 5, 6]))
    mask = gdal.Open(str(tmp_path / MASK_NAME)).ReadAsArray()
    changed = gdal.Open(str(folder / "change.bmp")).ReadAsArray() > 0
    unchanged = gdal.Open(str(folder / "unchanged.bmp")).ReadAsArray() > 0
    tp, fn = int((mask[changed] == 1).sum()), int((mask[changed] == 0).sum())
    tn, fp = int((mask[unchanged] == 0).sum()), int((mask[unchanged] == 1).sum())
    oa = (tp + tn) / (tp + tn + fp + fn)
    line = (f"Taizhou IR-MAD (6 bands, chi2 at 1 %): overall accuracy {oa:.4f}, recall {tp / (tp + fn):.4f}, "
            f"false-alarm rate {fp / (fp + tn):.4f} on {tp + fn} changed / {tn + fp} unchanged reference pixels")
    with capsys.disabled():
        print(f"\n[detect] {line}")
    log.warning("%s", line)
    assert tp + fn == int(changed.sum()), "every reference pixel was scored"


def _seam_distance(n: int, tile: int, overlap: int) -> np.ndarray:
    """Distance of each of ``n`` pixels to the nearest inner tile edge (the grid starts half an
    overlap before the raster: the reflected edge margin)."""
    margin = overlap // 2
    dist = np.full(n, 10**6)
    for s in tile_starts(n + 2 * margin, tile, overlap):
        for edge in (s - margin, s - margin + tile - 1):
            if 0 < edge < n - 1:
                dist = np.minimum(dist, np.abs(np.arange(n) - edge))
    return dist


@pytest.mark.slow
def test_seams_tiled_vs_whole_image(geotiff_dir: Path, tiny_weights: Any, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    """Tiled + blended output vs one whole-image pass of the same fixed model (tiny ChangeCLIP)."""
    folder = geotiff_dir / "ChenHongruixuan_ChangeDetectionRepository/Taizhou"
    params = DetectParams(str(folder / "2000TM"), str(folder / "2003TM"), str(tmp_path), engine="changeclip",
                          weights=str(tiny_weights("tiny-rn50")), prompt_mode="none", device="cpu",
                          probability_dtype="float32")
    s = run_detection(params)
    tiled = gdal.Open(str(tmp_path / PROBABILITY_NAME)).ReadAsArray()
    b = gdal.Open(params.before).ReadAsArray()[:3].astype(np.float32)  # 8-bit: scaling is the identity
    a = gdal.Open(params.after).ReadAsArray()[:3].astype(np.float32)
    h, w = b.shape[1:]
    size = -(-max(h, w) // 32) * 32
    engine = build_engine(params)
    whole = engine.predict_proba(pad_to_tile(b, size)[None], pad_to_tile(a, size)[None], None)[0, :h, :w]
    thr = s["threshold"]
    agree = float(((whole > thr) == (tiled > thr)).mean())
    diff = np.abs(whole - tiled)
    dist = np.minimum(*np.meshgrid(_seam_distance(h, 256, 64), _seam_distance(w, 256, 64), indexing="ij"))
    near, far = float(diff[dist < 4].mean()), float(diff[dist >= 16].mean())
    with capsys.disabled():
        print(f"\n[detect] seams (tiny ChangeCLIP, Taizhou, tile 256 overlap 64): mask agreement {agree:.5f}; "
              f"mean |dp| within 4 px of tile edges {near:.4f} vs >= 16 px away {far:.4f}")
    assert agree >= 0.995
    # without overlap/blending this ratio is ~2.7 on the same data
    assert near <= 1.5 * far, "no seam: differences are not concentrated at tile edges"


class _LocalEngine:
    """A fixed engine with a known 17 x 17 px receptive field (box-filtered band difference)."""

    name = "local-test"
    default_threshold = 0.5
    clip_input = True
    needs_context = True
    device = "cpu"
    training_data = None
    radius = 8

    def fit(self, before_sample: np.ndarray, after_sample: np.ndarray) -> None:
        pass

    def predict_proba(self, before: np.ndarray, after: np.ndarray, valid: Any) -> np.ndarray:
        r = self.radius
        d = np.abs(before - after).mean(axis=1)
        p = np.pad(d, ((0, 0), (r, r), (r, r)), mode="reflect")
        c = np.cumsum(np.cumsum(np.pad(p, ((0, 0), (1, 0), (1, 0))), axis=1), axis=2)
        k = 2 * r + 1
        box = (c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]) / (k * k)
        return (1.0 / (1.0 + np.exp(-(box - 12.0) / 3.0))).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


@pytest.mark.parametrize("overlap", [64, 0])
def test_seams_local_model_weighted_blending(geotiff_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             overlap: int, capsys: pytest.CaptureFixture) -> None:
    """With a model whose context is known, blended tiles reproduce the whole-image result; without
    overlap the tile edges show (so the measure can fail)."""
    engine = _LocalEngine()
    monkeypatch.setattr("changeclip.pipeline.build_engine", lambda params, cache=None: engine)
    before, after = (str(geotiff_dir / p) for p in PAIRS["naip"])
    params = DetectParams(before, after, str(tmp_path), engine="changeclip", weights="unused", prompt_mode="none",
                          tile=256, overlap=overlap, probability_dtype="float32")
    s = run_detection(params)
    tiled = gdal.Open(str(tmp_path / PROBABILITY_NAME)).ReadAsArray()
    valid = gdal.Open(str(tmp_path / MASK_NAME)).ReadAsArray() != 255
    b = gdal.Open(before).ReadAsArray()[:3].astype(np.float32)
    a_ds = gdal.Warp("", after, format="MEM", outputBounds=_bounds(gdal.Open(before)), width=b.shape[2],
                     height=b.shape[1], dstSRS=gdal.Open(before).GetProjection(), resampleAlg="bilinear")
    a = a_ds.ReadAsArray()[:3].astype(np.float32)
    whole = engine.predict_proba(b[None], a[None], None)[0]
    thr = float(np.median(whole[valid]))
    agree = float(((whole > thr) == (tiled > thr))[valid].mean())
    max_dp = float(np.abs(whole - tiled)[valid].max())
    with capsys.disabled():
        print(f"\n[detect] local 17x17 model on NAIP, tile 256 overlap {overlap}: agreement {agree:.5f} at the "
              f"median threshold, max |dp| {max_dp:.4f} ({s['tiles']['total']} tiles)")
    if overlap:
        assert agree >= 0.995 and max_dp < 0.05
    else:  # the same measure sees the seams of unblended tiles
        assert max_dp > 0.2


def _bounds(ds: gdal.Dataset) -> tuple[float, float, float, float]:
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    return x0, y0 + dy * ds.RasterYSize, x0 + dx * ds.RasterXSize, y0
