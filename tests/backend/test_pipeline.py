"""run_detection on generated rasters: outputs, grids, nodata, every bad input, cancel, disk full."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
from geodata import change_pair, read, textured, write_raster
from osgeo import gdal, ogr

from changeclip.errors import InputError, JobCancelled, ModelError
from changeclip.pipeline import run_detection
from changeclip.protocol import (
    MASK_NAME,
    POLYGONS_NAME,
    PROBABILITY_NAME,
    STAGES,
    SUMMARY_KEYS,
    SUMMARY_NAME,
    DetectParams,
)
from changeclip.raster import outputs

GT = (500000.0, 10.0, 0.0, 5600000.0, 0.0, -10.0)


def _params(before: str, after: str, out: Path, **kw: object) -> DetectParams:
    base: dict[str, object] = {"engine": "irmad", "tile": 128, "overlap": 32}
    base.update(kw)
    return DetectParams(before, after, str(out), **base)  # type: ignore[arg-type]


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def test_irmad_run_outputs(tmp_path: Path) -> None:
    b, a, truth = change_pair(tmp_path)
    out = tmp_path / "out"
    events: list[tuple[str, int, int]] = []
    s = run_detection(_params(b, a, out, polygons=True, min_area=500), progress=lambda *e: events.append(e))
    assert set(SUMMARY_KEYS) <= set(s)
    assert sorted(p.name for p in out.iterdir()) == sorted([MASK_NAME, PROBABILITY_NAME, POLYGONS_NAME, SUMMARY_NAME])
    assert json.loads((out / SUMMARY_NAME).read_text()) == json.loads(json.dumps(s))
    stages = [e[0] for e in events]
    assert stages[0] == "preparing" and stages[-1] == "done"
    order = [STAGES.index(st) for st in stages]
    assert order == sorted(order), "stages are reported in protocol order"
    mask = read(out / MASK_NAME)
    assert mask.shape == truth.shape and set(np.unique(mask)) <= {0, 1}
    assert (mask[truth] == 1).mean() > 0.9 and (mask[~truth] == 1).mean() < 0.03
    prob = read(out / PROBABILITY_NAME)
    assert prob.dtype == np.uint8 and prob.max() <= 100
    ds = gdal.Open(str(out / MASK_NAME))
    assert tuple(ds.GetGeoTransform()) == GT and ds.GetRasterBand(1).GetNoDataValue() == 255
    assert s["engine"] == "irmad" and s["device"] == "cpu" and s["prompt_mode"] is None
    assert s["threshold"] == 0.5 and s["model"]["name"] == "irmad"
    assert s["changed_area_m2"] == pytest.approx(s["changed_pixels"] * 100.0)
    assert s["valid_area_m2"] == pytest.approx(200 * 240 * 100.0)
    assert s["changed_fraction"] == pytest.approx(s["changed_pixels"] / (200 * 240))
    assert s["polygons"]["area_m2"] <= s["changed_area_m2"] and s["polygons"]["count"] >= 1
    gpkg = ogr.Open(str(out / POLYGONS_NAME))  # referenced while its features are read
    feat = gpkg.GetLayer(0).GetNextFeature()
    assert (feat["before"], feat["after"], feat["engine"], feat["model"], feat["prompt"], feat["threshold"]) == (
        "before.tif", "after.tif", "irmad", "irmad", "", 0.5)
    assert feat["detected_at"].endswith("Z") and feat["detected_at"][:4].isdigit()
    # every polygon is made of pixels above the threshold (probabilities stored in whole percent)
    assert all(f["mean_prob"] >= s["threshold"] - 0.01 for f in gpkg.GetLayer(0))
    assert s["tiles"]["overlap"] == 0 and s["tiles"]["overlap_requested"] == 32  # irmad is pixelwise
    assert not [p for p in tmp_path.rglob(".*")], "no temporary file is left behind"


def test_nodata_border_is_nodata_and_tiles_skipped(tmp_path: Path) -> None:
    """A black (nodata) border in one date: outputs carry nodata there, never change."""
    h, w = 300, 300
    img = textured(h, w)
    after = img.copy()
    after[:, :, :140] = 0  # left part of the after image is nodata
    b = write_raster(tmp_path / "b.tif", img, nodata=0)
    a = write_raster(tmp_path / "a.tif", after, nodata=0)
    s = run_detection(_params(b, a, tmp_path / "o"))
    mask = read(tmp_path / "o" / MASK_NAME)
    assert np.all(mask[:, :140] == 255) and np.all(mask[:, 140:] != 255)
    assert s["tiles"]["skipped_nodata"] >= 1 and s["valid_pixels"] == h * (w - 140)
    prob = read(tmp_path / "o" / PROBABILITY_NAME)
    assert np.all(prob[:, :140] == 255)


def test_after_in_other_crs_and_partial_overlap(tmp_path: Path) -> None:
    b, a, _ = change_pair(tmp_path)
    geo = tmp_path / "after_4326.tif"
    gdal.Warp(str(geo), a, dstSRS="EPSG:4326", outputBounds=None).FlushCache()
    s = run_detection(_params(b, str(geo), tmp_path / "o"))
    ds = gdal.Open(str(tmp_path / "o" / MASK_NAME))
    assert (ds.RasterXSize, ds.RasterYSize) == (240, 200) and tuple(ds.GetGeoTransform()) == GT
    assert s["inputs"]["warped"] == {"before": False, "after": True}
    assert s["valid_pixels"] > 0.9 * 240 * 200
    # after grid as reference, and a custom grid
    s2 = run_detection(_params(b, str(geo), tmp_path / "o2", grid="after"))
    ds2 = gdal.Open(str(tmp_path / "o2" / MASK_NAME))
    assert tuple(ds2.GetGeoTransform()) == pytest.approx(tuple(gdal.Open(str(geo)).GetGeoTransform()))
    assert s2["grid"]["epsg"] == 4326 and s2["changed_area_m2"] > 0
    run_detection(_params(b, a, tmp_path / "o3", grid="custom", target_crs="EPSG:32633", resolution=20.0))
    ds3 = gdal.Open(str(tmp_path / "o3" / MASK_NAME))
    assert (ds3.RasterXSize, ds3.RasterYSize) == (120, 100) and ds3.GetGeoTransform()[1] == 20.0


def test_uint16_bands_mapping_and_alpha(tmp_path: Path) -> None:
    img = textured(150, 170, c=4, dtype="uint16", scale=12)
    after = img.copy()
    after[:, 40:90, 50:120] = img[:, 0:50, 0:70][::-1]
    alpha = np.full((150, 170), 65535, np.uint16)
    alpha[:20] = 0
    b = write_raster(tmp_path / "b.tif", img, alpha=alpha)
    a = write_raster(tmp_path / "a.tif", after)
    s = run_detection(_params(b, a, tmp_path / "o", bands=[4, 3, 2], probability_dtype="float32"))
    assert s["scaling"]["source"] == "percentile" and s["inputs"]["bands"] == [4, 3, 2]
    mask = read(tmp_path / "o" / MASK_NAME)
    assert np.all(mask[:20] == 255) and (mask[40:90, 50:120] == 1).mean() > 0.8
    prob = read(tmp_path / "o" / PROBABILITY_NAME)
    assert prob.dtype == np.float32 and np.all(prob[:20] == -1.0)


def test_overwrite(tmp_path: Path) -> None:
    b, a, _ = change_pair(tmp_path)
    run_detection(_params(b, a, tmp_path / "o"))
    before = (tmp_path / "o" / MASK_NAME).stat().st_mtime_ns
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        run_detection(_params(b, a, tmp_path / "o"))
    assert (tmp_path / "o" / MASK_NAME).stat().st_mtime_ns == before
    run_detection(_params(b, a, tmp_path / "o", overwrite=True, threshold=0.5))
    assert json.loads((tmp_path / "o" / SUMMARY_NAME).read_text())["threshold"] == 0.5


# --- bad input: a clear error, nothing written ----------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> tuple[str, str]:
    b, a, _ = change_pair(tmp_path, h=80, w=90)
    return b, a


def _bad(params: DetectParams, out: Path, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        run_detection(params)
    assert _nothing_written(out)


def test_bad_missing_file(tmp_path: Path, pair: tuple[str, str]) -> None:
    _bad(_params(str(tmp_path / "nope.tif"), pair[1], tmp_path / "o"), tmp_path / "o", InputError,
         "before raster not found")


def test_bad_not_a_raster(tmp_path: Path, pair: tuple[str, str]) -> None:
    txt = tmp_path / "x.tif"
    txt.write_text("hello")
    _bad(_params(pair[0], str(txt), tmp_path / "o"), tmp_path / "o", InputError, "not a raster GDAL can read")


def test_bad_too_few_bands(tmp_path: Path, pair: tuple[str, str]) -> None:
    one = write_raster(tmp_path / "one.tif", textured(80, 90, c=1))
    _bad(_params(pair[0], one, tmp_path / "o"), tmp_path / "o", InputError, "has 1 band.*--bands")


def test_bad_band_out_of_range(tmp_path: Path, pair: tuple[str, str]) -> None:
    _bad(_params(pair[0], pair[1], tmp_path / "o", bands=[4, 2, 1]), tmp_path / "o", InputError,
         "band 4 does not exist.*1 to 3")


def test_bad_no_overlap(tmp_path: Path, pair: tuple[str, str]) -> None:
    far = write_raster(tmp_path / "far.tif", textured(80, 90), gt=(700000.0, 10.0, 0.0, 5600000.0, 0.0, -10.0))
    _bad(_params(pair[0], far, tmp_path / "o"), tmp_path / "o", InputError, "do not overlap")


def test_bad_missing_crs(tmp_path: Path, pair: tuple[str, str]) -> None:
    nocrs = write_raster(tmp_path / "nocrs.tif", textured(80, 90), epsg=None)
    _bad(_params(pair[0], nocrs, tmp_path / "o"), tmp_path / "o", InputError, "no coordinate reference system")


def test_bad_gcps_or_rpcs_only(tmp_path: Path, pair: tuple[str, str]) -> None:
    # GDAL would read these on a bare pixel grid; they must be warped/orthorectified first.
    from osgeo import gdal

    src = gdal.Open(pair[1])
    gcp = str(tmp_path / "gcp.tif")
    gdal.Translate(gcp, src, outputSRS="EPSG:32633", GCPs=[
        gdal.GCP(500000.0, 5000000.0, 0.0, 0.0, 0.0), gdal.GCP(500900.0, 5000000.0, 0.0, 90.0, 0.0),
        gdal.GCP(500000.0, 4999200.0, 0.0, 0.0, 80.0)])
    assert gdal.Open(gcp).GetGeoTransform(can_return_null=True) is None
    _bad(_params(pair[0], gcp, tmp_path / "o"), tmp_path / "o", InputError,
         r"after raster .* only by 3 ground control points .*gdalwarp")
    rpc = write_raster(tmp_path / "rpc.tif", textured(80, 90), epsg=None, gt=None)
    ds = gdal.Open(rpc, gdal.GA_Update)
    ds.SetMetadata({"LINE_OFF": "40", "SAMP_OFF": "45", "LAT_OFF": "45", "LONG_OFF": "15", "HEIGHT_OFF": "0",
                    "LINE_SCALE": "40", "SAMP_SCALE": "45", "LAT_SCALE": "0.01", "LONG_SCALE": "0.01",
                    "HEIGHT_SCALE": "100", "LINE_NUM_COEFF": " ".join(["1"] * 20),
                    "LINE_DEN_COEFF": " ".join(["1"] * 20), "SAMP_NUM_COEFF": " ".join(["1"] * 20),
                    "SAMP_DEN_COEFF": " ".join(["1"] * 20)}, "RPC")
    ds = None
    _bad(_params(rpc, pair[1], tmp_path / "o"), tmp_path / "o", InputError,
         r"before raster .* \(RPCs\) .*not orthorectified.*gdalwarp -rpc")


def test_bad_all_nodata(tmp_path: Path, pair: tuple[str, str]) -> None:
    empty = write_raster(tmp_path / "empty.tif", np.zeros((3, 80, 90), np.uint8), nodata=0)
    _bad(_params(pair[0], empty, tmp_path / "o"), tmp_path / "o", InputError, "no pixel .* valid in both")


def test_bad_unwritable_output(tmp_path: Path, pair: tuple[str, str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        run_detection(_params(pair[0], pair[1], blocker / "out"))
    assert blocker.read_text() == "x"


def test_bad_unwritable_output_permissions(tmp_path: Path, pair: tuple[str, str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    def refuse(*a: object, **k: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    _bad(_params(pair[0], pair[1], tmp_path / "o"), tmp_path / "o", InputError, "not writable")


def test_bad_output_exists(tmp_path: Path, pair: tuple[str, str]) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / SUMMARY_NAME).write_text("{}")
    with pytest.raises(InputError, match="already exists"):
        run_detection(_params(pair[0], pair[1], tmp_path / "o"))
    assert [p.name for p in (tmp_path / "o").iterdir()] == [SUMMARY_NAME]


def test_bad_weights(tmp_path: Path, pair: tuple[str, str]) -> None:
    _bad(_params(pair[0], pair[1], tmp_path / "o", engine="changeclip", prompt_mode="none"), tmp_path / "o",
         ModelError, "needs weights")
    junk = tmp_path / "w.safetensors"
    junk.write_bytes(b"0" * 100)
    _bad(_params(pair[0], pair[1], tmp_path / "o", engine="changeclip", prompt_mode="none", weights=str(junk)),
         tmp_path / "o", ModelError, "neither a safetensors file nor a PyTorch checkpoint")


def test_bad_tile_size(tmp_path: Path, pair: tuple[str, str]) -> None:
    _bad(_params(pair[0], pair[1], tmp_path / "o", tile=100), tmp_path / "o", InputError, "multiple of 32.*try 96")


def test_disk_full_leaves_no_final_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b, a, _ = change_pair(tmp_path, h=300, w=300)
    calls = {"n": 0}
    real = outputs.BlockRasterWriter.write

    def full(self: outputs.BlockRasterWriter, array: np.ndarray, xoff: int, yoff: int) -> None:
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, array, xoff, yoff)

    monkeypatch.setattr(outputs.BlockRasterWriter, "write", full)
    out = tmp_path / "o"
    with pytest.raises(InputError, match="disk is full"):
        run_detection(_params(b, a, out, polygons=True))
    assert calls["n"] > 2
    assert _nothing_written(out)
    assert not out.exists(), "the folder this run created is removed again"


def test_disk_full_during_cog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b, a, _ = change_pair(tmp_path, h=100, w=100)
    (tmp_path / "o").mkdir()
    real = outputs.to_cog
    n = {"c": 0}

    def cog(src: str, dst: str, resampling: str, *args: object) -> None:
        n["c"] += 1
        real(src, dst, resampling, *args)
        if n["c"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("changeclip.pipeline.to_cog", cog)
    with pytest.raises(InputError, match="disk is full"):
        run_detection(_params(b, a, tmp_path / "o"))
    assert list((tmp_path / "o").iterdir()) == []


def test_cancel_removes_everything(tmp_path: Path) -> None:
    b, a, _ = change_pair(tmp_path, h=300, w=300)
    polls = {"n": 0}

    def is_cancelled() -> bool:
        polls["n"] += 1
        return polls["n"] > 2

    with pytest.raises(JobCancelled):
        run_detection(_params(b, a, tmp_path / "o"), is_cancelled=is_cancelled)
    assert _nothing_written(tmp_path / "o")


def test_cancel_during_cog_conversion(tmp_path: Path) -> None:
    b, a, _ = change_pair(tmp_path, h=100, w=100)
    stage = {"name": ""}

    def progress(name: str, done: int, total: int) -> None:
        stage["name"] = name

    with pytest.raises(JobCancelled):
        run_detection(_params(b, a, tmp_path / "o"), progress=progress,
                      is_cancelled=lambda: stage["name"] == "finalising")
    assert _nothing_written(tmp_path / "o")


def test_polygons_overlay_mask(tmp_path: Path) -> None:
    b, a, _ = change_pair(tmp_path)
    out = tmp_path / "o"
    run_detection(_params(b, a, out, polygons=True, min_pixels=0))  # every change pixel in a polygon
    mask = read(out / MASK_NAME)
    mem = gdal.GetDriverByName("MEM").Create("", mask.shape[1], mask.shape[0], 1, gdal.GDT_Byte)
    ref = gdal.Open(str(out / MASK_NAME))
    mem.SetGeoTransform(ref.GetGeoTransform())
    mem.SetProjection(ref.GetProjection())
    vec = ogr.Open(str(out / POLYGONS_NAME))
    gdal.RasterizeLayer(mem, [1], vec.GetLayer(0), burn_values=[1])
    np.testing.assert_array_equal(mem.ReadAsArray() == 1, mask == 1)


def test_geographic_crs_areas(tmp_path: Path) -> None:
    """On a grid in degrees the changed area (m²) is ellipsoidal and equals the polygons' total."""
    gt = (10.0, 0.0001, 0.0, 60.0, 0.0, -0.0001)
    b, a, truth = change_pair(tmp_path, h=150, w=160, gt=gt, epsg=4326)
    s = run_detection(_params(b, a, tmp_path / "o", polygons=True, min_pixels=0))
    assert s["grid"]["epsg"] == 4326
    # a 0.0001° pixel at 60°N is about 11.1 m x 5.6 m
    px = s["valid_area_m2"] / s["valid_pixels"]
    assert 55 < px < 70
    assert s["polygons"]["area_m2"] == pytest.approx(s["changed_area_m2"], rel=1e-6)
    assert s["changed_pixels"] >= 0.9 * truth.sum()


def test_float_input_with_nan(tmp_path: Path) -> None:
    img = textured(120, 140).astype(np.float32) / 255.0
    after = img * 1.1 + 0.02
    after[:, 30:70, 40:100] = img[:, 0:40, 0:60][::-1] * 1.1
    img[:, :, :10] = np.nan
    b = write_raster(tmp_path / "b.tif", img)
    a = write_raster(tmp_path / "a.tif", after)
    s = run_detection(_params(b, a, tmp_path / "o"))
    assert s["scaling"]["source"] == "percentile" and s["scaling"]["high"][0] < 1.5
    mask = read(tmp_path / "o" / MASK_NAME)
    assert np.all(mask[:, :10] == 255) and (mask[30:70, 40:100] == 1).mean() > 0.8


def test_jp2_and_vrt_inputs(tmp_path: Path) -> None:
    b, a, truth = change_pair(tmp_path, h=96, w=96)
    jp2 = tmp_path / "before.jp2"
    gdal.Translate(str(jp2), b, format="JP2OpenJPEG", creationOptions=["REVERSIBLE=YES", "QUALITY=100"]).FlushCache()
    vrt = tmp_path / "after.vrt"
    gdal.BuildVRT(str(vrt), [a]).FlushCache()
    s = run_detection(_params(str(jp2), str(vrt), tmp_path / "o"))
    assert s["inputs"]["warped"] == {"before": False, "after": False}
    mask = read(tmp_path / "o" / MASK_NAME)
    assert (mask[truth] == 1).mean() > 0.9


def test_resolution_mismatch_is_warned_about(tmp_path: Path) -> None:
    # 10 m before, 40 m after over the same area: the after raster is upsampled 4x.
    before = write_raster(tmp_path / "b.tif", textured(96, 96), gt=(500000.0, 10.0, 0.0, 5600000.0, 0.0, -10.0))
    after = write_raster(tmp_path / "a.tif", textured(24, 24, seed=1), gt=(500000.0, 40.0, 0.0, 5600000.0, 0.0, -40.0))
    s = run_detection(_params(before, after, tmp_path / "o"))
    (warning,) = [w for w in s["warnings"] if "pixels are about" in w]
    assert warning.startswith("the after raster's pixels are about 4.0x larger") and "--grid after" in warning
    assert "Output grid 'after'" in warning
    s = run_detection(_params(before, after, tmp_path / "o2", grid="after"))
    (warning,) = [w for w in s["warnings"] if "pixels are about" in w]
    assert warning.startswith("the before raster's pixels are about 4.0x smaller") and "--grid before" in warning
    # a shifted grid of the same resolution (1.5x is under the factor of 2): no such warning
    near = write_raster(tmp_path / "n.tif", textured(64, 64, seed=2), gt=(500003.0, 15.0, 0.0, 5600004.0, 0.0, -15.0))
    s = run_detection(_params(before, near, tmp_path / "o3"))
    assert not [w for w in s["warnings"] if "pixels are about" in w]


def test_both_without_crs_on_the_same_grid(tmp_path: Path) -> None:
    b, a, _ = change_pair(tmp_path, h=64, w=64, epsg=None, gt=(0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    s = run_detection(_params(b, a, tmp_path / "o"))
    assert s["changed_area_m2"] is None and s["valid_area_m2"] is None and s["changed_pixels"] > 0
    assert any("no CRS" in w for w in s["warnings"])
    other = write_raster(tmp_path / "other.tif", textured(64, 64), epsg=None, gt=(5.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    with pytest.raises(InputError, match="neither raster has a CRS and their grids differ"):
        run_detection(_params(b, other, tmp_path / "o2"))


def test_engine_runtime_error_is_not_called_a_read_error(tmp_path: Path, pair: tuple[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A RuntimeError from the network (e.g. CUDA out of memory) keeps its own message."""
    from changeclip.engines.irmad import IRMADEngine

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(IRMADEngine, "predict_proba", boom)
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="CUDA out of memory") as info:
        run_detection(_params(pair[0], pair[1], out))
    assert not isinstance(info.value, InputError)
    assert _nothing_written(out)


def test_gdal_read_error_is_an_input_error(tmp_path: Path, pair: tuple[str, str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A GDAL error during the tiles (e.g. a truncated file) names the files as the problem."""
    from osgeo import gdal

    def truncated(self: object, *a: object, **k: object) -> None:
        gdal.Open("/nonexistent/truncated.tif")  # raises GDAL's own RuntimeError from inside osgeo

    from changeclip.engines.irmad import IRMADEngine

    monkeypatch.setattr(IRMADEngine, "predict_proba", truncated)
    out = tmp_path / "o"
    _bad(_params(pair[0], pair[1], out), out, InputError, "reading the rasters failed")



def test_scene_far_from_the_training_gsd_is_warned_about(tmp_path: Path) -> None:
    from changeclip.model.config import PRESETS
    from changeclip.weights.native import save_weights
    from changeclip.weights.seeded import seeded_state_dict

    cfg = PRESETS["tiny-rn50"]
    weights = save_weights(seeded_state_dict(cfg), cfg, tmp_path / "levir.safetensors",
                           meta={"train_dataset": "LEVIR-CD", "train_gsd_m": 0.5})
    kw = {"engine": "changeclip", "weights": str(weights), "prompt_mode": "none", "device": "cpu", "tile": 64,
          "overlap": 16}
    # 2 m pixels (UTM, near the central meridian): 4x coarser than LEVIR-CD's 0.5 m
    coarse = (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0)
    b = write_raster(tmp_path / "b.tif", textured(64, 64), gt=coarse)
    a = write_raster(tmp_path / "a.tif", textured(64, 64, seed=1), gt=coarse)
    s = run_detection(_params(b, a, tmp_path / "o", **kw))
    assert s["model"]["training_data"] == {"dataset": "LEVIR-CD", "gsd_m": 0.5, "source": "weights metadata"}
    (warning,) = [w for w in s["warnings"] if "trained on" in w]
    assert "about 2 m on the ground, 4.0x coarser than the LEVIR-CD at 0.5 m/px" in warning
    assert "--target-crs EPSG:32633 --resolution 0.5" in warning and "Target CRS EPSG:32633, Resolution 0.5" in warning
    # 0.5 m pixels: no scale warning
    fine = (500000.0, 0.5, 0.0, 5600000.0, 0.0, -0.5)
    b = write_raster(tmp_path / "b2.tif", textured(64, 64), gt=fine)
    a = write_raster(tmp_path / "a2.tif", textured(64, 64, seed=1), gt=fine)
    s = run_detection(_params(b, a, tmp_path / "o2", **kw))
    assert not [w for w in s["warnings"] if "trained on" in w]
    # following the advice (a custom grid at 0.5 m over the 2 m scene) silences it
    b, a = str(tmp_path / "b.tif"), str(tmp_path / "a.tif")
    s = run_detection(_params(b, a, tmp_path / "o3", grid="custom",
                              target_crs="EPSG:32633", resolution=0.5, **kw))
    assert not [w for w in s["warnings"] if "trained on" in w]
    # irmad has no training data: never such a warning
    s = run_detection(_params(b, a, tmp_path / "o4"))
    assert not [w for w in s["warnings"] if "trained on" in w]
    # the network's polygons say which model and prompt made them
    s = run_detection(_params(b, a, tmp_path / "o5", polygons=True, **{**kw, "prompt_mode": "words",
                                                                       "prompt": "building", "threshold": 0.01}))
    assert s["polygons"]["count"] >= 1
    gpkg = ogr.Open(s["outputs"]["polygons"])
    feat = gpkg.GetLayer(0).GetNextFeature()
    assert (feat["engine"], feat["model"], feat["prompt"], feat["threshold"]) == (
        "changeclip", "tiny-rn50 (levir.safetensors)", "building", 0.01)


def test_pipeline_and_irmad_do_not_import_torch() -> None:
    # torch costs ~300 MB of RSS: an irmad run must not pay it (test_detect_memory's bound relies on it)
    import subprocess
    import sys

    code = "import sys, changeclip.pipeline, changeclip.engines.irmad; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_non_finite_probabilities_stop_the_run_with_nothing_written(tmp_path: Path) -> None:
    """An engine that returns NaN (fp16 overflow, broken weights) must not be written as a mask of
    garbage: the run stops with a ModelError naming the fix, and no output appears."""
    from changeclip.bench.end_to_end import NoOpEngine
    from changeclip.errors import ModelError
    from changeclip.pipeline import run_detection
    from changeclip.protocol import DetectParams

    class NaNEngine(NoOpEngine):
        def predict_proba(self, before, after, valid):  # noqa: ANN001, ANN201
            out = super().predict_proba(before, after, valid)
            out[:, 5, 5] = np.nan
            return out

    before, after, _ = change_pair(tmp_path, h=96, w=96)
    out = tmp_path / "out"
    with pytest.raises(ModelError, match="non-finite change probabilities.*fp32"):
        run_detection(DetectParams(before, after, str(out), engine="irmad", tile=64, overlap=16), engine=NaNEngine())
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]
