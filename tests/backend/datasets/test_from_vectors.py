"""``dataset from-vectors``: labels equal an independent gdal.Rasterize, spatial split without leakage,
AOI and nodata ignored, and every bad input refused before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dshelpers import (
    NAIP_AFTER,
    NAIP_BEFORE,
    box,
    rasterize_reference,
    read,
    reproject_wkt,
    tile_offset,
    write_layer,
)
from geodata import write_raster
from osgeo import gdal, ogr

from changeclip.cli import main
from changeclip.datasets.from_vectors import make_dataset
from changeclip.datasets.manifest import read_manifest
from changeclip.errors import InputError
from changeclip.protocol import DatasetParams

X0, Y1 = 486900.0, 5208495.0  # top-left of the NAIP 2015 grid (5 m, 512 x 384 px)
CHANGES = [
    box(X0 + 103, Y1 - 402, X0 + 377, Y1 - 213),
    box(X0 + 1203.7, Y1 - 1502.2, X0 + 1291.1, Y1 - 1333.3),
    f"POLYGON(({X0 + 2000} {Y1 - 300},{X0 + 2300} {Y1 - 310},{X0 + 2150} {Y1 - 620},{X0 + 2000} {Y1 - 300}))",
    # a polygon with a hole
    f"POLYGON(({X0 + 600} {Y1 - 1600},{X0 + 1000} {Y1 - 1600},{X0 + 1000} {Y1 - 1200},{X0 + 600} {Y1 - 1200},"
    f"{X0 + 600} {Y1 - 1600}),({X0 + 700} {Y1 - 1500},{X0 + 900} {Y1 - 1500},{X0 + 900} {Y1 - 1300},"
    f"{X0 + 700} {Y1 - 1300},{X0 + 700} {Y1 - 1500}))",
    box(X0 + 1802.5, Y1 - 1102.5, X0 + 1811.5, Y1 - 1093.5),  # about two pixels
]
SMALL = {"tile": 64, "stride": 48, "val_block_size": 640.0}


def _opts(tmp: Path, changes: Path, **kw: object) -> DatasetParams:
    base: dict[str, object] = {"before": str(NAIP_BEFORE), "after": str(NAIP_AFTER), "changes": str(changes),
                               "output_dir": str(tmp / "ds"), **SMALL}
    base.update(kw)
    return DatasetParams(**base)  # type: ignore[arg-type]


def _tiles(root: Path) -> dict[str, list[Path]]:
    """Label tile paths per split, from the manifest."""
    m = read_manifest(root)
    return {s: [m.tile_paths(s, t)[2] for t in info.tiles] for s, info in m.splits.items()}


def _check_against_reference(root: Path, ref: np.ndarray, ignore: np.ndarray | None = None) -> int:
    """Every tile's label equals the reference where labelled; returns how many change pixels were compared."""
    compared = 0
    for paths in _tiles(root).values():
        for p in paths:
            lab = read(p)
            col, row = tile_offset(p)
            r = ref[row:row + lab.shape[0], col:col + lab.shape[1]]
            assert r.shape == lab.shape, p
            labelled = lab != 255
            if ignore is not None:
                ig = ignore[row:row + lab.shape[0], col:col + lab.shape[1]]
                assert not (labelled & ig).any(), f"{p.name}: a pixel that must be ignored is labelled"
                assert (~labelled == ig).all(), f"{p.name}: ignored pixels differ from the expected ones"
            np.testing.assert_array_equal(lab[labelled], r[labelled], err_msg=p.name)
            compared += int(lab.sum(where=labelled))
    return compared


@pytest.fixture(scope="module")
def changes_gpkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_layer(tmp_path_factory.mktemp("vec") / "changes.gpkg", CHANGES)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, changes_gpkg: Path) -> Path:
    tmp = tmp_path_factory.mktemp("ds")
    make_dataset(_opts(tmp, changes_gpkg, train_dataset="naip-test"))
    return tmp / "ds"


def test_labels_equal_gdal_rasterize(dataset: Path, changes_gpkg: Path) -> None:
    ref = rasterize_reference(changes_gpkg, NAIP_BEFORE)
    assert _check_against_reference(dataset, ref) > 0
    # the overlap is fully valid in both dates here, so every pixel of every tile is labelled
    for paths in _tiles(dataset).values():
        for p in paths:
            assert (read(p) != 255).all()


def test_all_touched_and_other_crs_match_gdal(tmp_path: Path) -> None:
    wgs = write_layer(tmp_path / "changes_4326.geojson", [reproject_wkt(w, 26914, 4326) for w in CHANGES],
                      epsg=4326, driver="GeoJSON")
    make_dataset(_opts(tmp_path, wgs, all_touched=True))
    ref = rasterize_reference(wgs, NAIP_BEFORE, all_touched=True)
    assert _check_against_reference(tmp_path / "ds", ref) > 0
    m = read_manifest(tmp_path / "ds")
    changes = next(s for s in m.sources if s["role"] == "changes")
    assert changes["crs"] == "EPSG:4326" and changes["polygons"] == len(CHANGES)


def test_manifest_records_sources_scaling_and_histograms(dataset: Path) -> None:
    m = read_manifest(dataset)
    assert m.kind == "from-vectors" and m.image_format == "tif" and m.tile_size == 64
    assert m.gsd_m == pytest.approx(5.0, rel=0.01)
    assert "26914" in m.crs_wkt and m.train_dataset == "naip-test"
    assert m.bands == [1, 2, 3] and m.value_range is None  # 8-bit input used as is, as detect does
    roles = {s["role"]: s for s in m.sources}
    assert set(roles) == {"before", "after", "changes"}
    assert len(roles["before"]["sha256"]) == 64 and roles["after"]["crs"] == "EPSG:26914"
    for split, info in m.splits.items():
        counts = {"0": 0, "1": 0, "255": 0}
        for t in info.tiles:
            lab = read(m.tile_paths(split, t)[2])
            for k in counts:
                counts[k] += int((lab == int(k)).sum())
        assert info.pixels == counts, split
    a, b, lab = (read(p) for p in m.tile_paths("train", m.splits["train"].tiles[0]))
    assert a.shape == b.shape == (3, 64, 64) and a.dtype == np.uint8 and lab.shape == (64, 64)
    assert gdal.Open(str(m.tile_paths("train", m.splits["train"].tiles[0])[0])).GetProjection()


def test_tiles_are_the_pixels_detect_reads(dataset: Path) -> None:
    """Same grid, same scaling: a before tile equals the before raster's pixels (8-bit, same grid)."""
    m = read_manifest(dataset)
    src = read(NAIP_BEFORE)
    for t in m.splits["train"].tiles[:5]:
        p = m.tile_paths("train", t)[0]
        col, row = tile_offset(p)
        expected = src[:, row:row + 64, col:col + 64]
        valid = (expected != 0).all(axis=0)  # nodata 0 is filled with grey
        np.testing.assert_array_equal(read(p)[:, valid], expected[:, valid])


def _extent(p: Path) -> tuple[int, int, int, int]:
    col, row = tile_offset(p)
    return col, row, col + 64, row + 64


def test_val_split_has_no_spatial_leakage(dataset: Path) -> None:
    tiles = _tiles(dataset)
    assert tiles["train"] and tiles["val"]
    train = [_extent(p) for p in tiles["train"]]
    val = [_extent(p) for p in tiles["val"]]

    def overlaps(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    assert any(overlaps(a, b) for a in train for b in train if a != b), "stride < tile: tiles must overlap"
    assert not any(overlaps(a, b) for a in train for b in val), "a val tile shares pixels with a train tile"
    m = read_manifest(dataset)
    block = m.options["val_block_size_px"]
    win = m.options["labelled_window"]
    val_blocks = set(m.options["blocks"]["val"])

    def block_of(c: int, length: int) -> int:
        n = len(range(0, length, block))
        if n > 1 and length - (n - 1) * block < 64:  # a remainder narrower than a tile joins its neighbour
            n -= 1
        return min(c // block, n - 1)

    for split, extents in (("train", train), ("val", val)):
        for x0, y0, x1, y1 in extents:
            cx = [block_of(x - win["xoff"], win["width"]) for x in (x0, x1 - 1)]
            cy = [block_of(y - win["yoff"], win["height"]) for y in (y0, y1 - 1)]
            assert cx[0] == cx[1] and cy[0] == cy[1], f"tile at {x0},{y0} crosses a block border"
            key = f"b{cy[0]:03d}_{cx[0]:03d}"
            assert (key in val_blocks) == (split == "val"), (split, key)
    share = len(val) / (len(val) + len(train))
    assert 0.1 <= share <= 0.5


def test_split_is_deterministic_with_seed(tmp_path: Path, changes_gpkg: Path, dataset: Path) -> None:
    make_dataset(_opts(tmp_path, changes_gpkg))
    assert read_manifest(tmp_path / "ds").splits["val"].tiles == read_manifest(dataset).splits["val"].tiles
    vals = set()
    for seed in (1, 2):
        make_dataset(_opts(tmp_path, changes_gpkg, seed=seed, overwrite=True))
        vals.add(tuple(read_manifest(tmp_path / "ds").splits["val"].tiles))
    vals.add(tuple(read_manifest(dataset).splits["val"].tiles))
    assert len(vals) > 1, "the seed must change the choice of val blocks"


def test_keep_empty_thins_training_tiles_only(tmp_path: Path, changes_gpkg: Path, dataset: Path) -> None:
    make_dataset(_opts(tmp_path, changes_gpkg, keep_empty=0.0))
    m = read_manifest(tmp_path / "ds")
    full = read_manifest(dataset)
    assert all((read(m.tile_paths("train", t)[2]) == 1).any() for t in m.splits["train"].tiles)
    assert len(m.splits["train"].tiles) < len(full.splits["train"].tiles)
    assert m.splits["val"].tiles == full.splits["val"].tiles
    assert m.options["dropped_empty_tiles"] == len(full.splits["train"].tiles) - len(m.splits["train"].tiles)


def test_aoi_and_nodata_are_ignored(tmp_path: Path, changes_gpkg: Path) -> None:
    src = read(NAIP_BEFORE)
    src[:, 100:140, 200:300] = 0  # nodata 0 in every band
    ds = gdal.Open(str(NAIP_BEFORE))
    before = write_raster(tmp_path / "before.tif", src, gt=ds.GetGeoTransform(), epsg=26914, nodata=0)
    aoi_box = (X0 + 50, Y1 - 1700, X0 + 1500, Y1 - 150)
    aoi = write_layer(tmp_path / "aoi.shp", [box(*aoi_box)], driver="ESRI Shapefile", name="aoi")
    make_dataset(_opts(tmp_path, changes_gpkg, before=before, aoi=str(aoi), val_block_size=320.0))
    ref = rasterize_reference(changes_gpkg, NAIP_BEFORE)
    inside = rasterize_reference(aoi, NAIP_BEFORE).astype(bool)
    ignore = ~inside
    ignore[100:140, 200:300] = True
    assert _check_against_reference(tmp_path / "ds", ref, ignore=ignore) > 0
    m = read_manifest(tmp_path / "ds")
    aoi_source = next(s for s in m.sources if s["role"] == "aoi")
    assert {"aoi.dbf", "aoi.shx", "aoi.prj"} <= set(aoi_source["sidecars"]), "a shapefile's other files are hashed"
    assert sum(info.pixels["255"] for info in m.splits.values()) > 0
    # the labelled window is the AOI's bounding box, not the whole overlap
    win = m.options["labelled_window"]
    assert win["xoff"] == 10 and win["width"] <= 291


# ---------- errors: each one clear, before any work, nothing written ----------


def _refused(tmp_path: Path, match: str, **kw: object) -> None:
    before = set(tmp_path.iterdir())
    with pytest.raises(InputError, match=match):
        make_dataset(_opts(tmp_path, kw.pop("changes", tmp_path / "none.gpkg"), **kw))  # type: ignore[arg-type]
    assert set(tmp_path.iterdir()) == before, "a refused run must write nothing"


def test_non_polygon_layer_refused(tmp_path: Path) -> None:
    pts = write_layer(tmp_path / "pts.gpkg", [f"POINT({X0 + 100} {Y1 - 100})"], geom_type=ogr.wkbPoint)
    _refused(tmp_path, "Point geometries; training labels need polygons", changes=pts)
    mixed = write_layer(tmp_path / "mixed.geojson", [CHANGES[0], f"LINESTRING({X0} {Y1 - 5},{X0 + 50} {Y1 - 50})"],
                        driver="GeoJSON", geom_type=ogr.wkbUnknown, epsg=26914)
    _refused(tmp_path, "non-polygon geometries \\(1 Line String\\)", changes=mixed)


def test_crs_less_layer_and_raster_refused(tmp_path: Path, changes_gpkg: Path) -> None:
    nocrs = write_layer(tmp_path / "nocrs.shp", CHANGES, epsg=None, driver="ESRI Shapefile")
    _refused(tmp_path, "has no coordinate reference system", changes=nocrs)
    b = write_raster(tmp_path / "b.tif", read(NAIP_BEFORE), epsg=None)
    a = write_raster(tmp_path / "a.tif", read(NAIP_BEFORE), epsg=None)
    _refused(tmp_path, "rasters have no coordinate reference system", changes=changes_gpkg, before=b, after=a)


def test_no_polygons_and_polygons_outside_refused(tmp_path: Path, changes_gpkg: Path) -> None:
    _refused(tmp_path, "holds no polygon matching --where", changes=changes_gpkg, where="kind = 'road'")
    _refused(tmp_path, "is not a valid filter", changes=changes_gpkg, where="no_such_field = 1")
    far = write_layer(tmp_path / "far.gpkg", [box(X0 + 90000, Y1, X0 + 90100, Y1 + 100)])
    _refused(tmp_path, "none of the 1 change polygons .* lies inside the overlap", changes=far)
    two = write_layer(tmp_path / "two.gpkg", CHANGES)
    write_layer(two, CHANGES, name="other", append=True)
    _refused(tmp_path, "holds 2 layers \\(changes, other\\); pick one with --layer", changes=two)
    _refused(tmp_path, "has no layer 'nope'", changes=two, layer="nope")


def test_aoi_covering_no_change_refused(tmp_path: Path, changes_gpkg: Path) -> None:
    aoi = write_layer(tmp_path / "aoi.gpkg", [box(X0 + 2400, Y1 - 1900, X0 + 2550, Y1 - 1750)], name="aoi")
    _refused(tmp_path, "covers none of the change polygons", changes=changes_gpkg, aoi=str(aoi))


def test_empty_val_split_refused(tmp_path: Path, changes_gpkg: Path) -> None:
    _refused(tmp_path, "val split would be empty; lower --val-block-size", changes=changes_gpkg,
             val_block_size=5000.0)
    _refused(tmp_path, "smaller than one tile", changes=changes_gpkg, val_block_size=100.0)
    _refused(tmp_path, "--val-fraction must be above 0", changes=changes_gpkg, val_fraction=0.0)


def test_existing_or_unwritable_output_refused(tmp_path: Path, changes_gpkg: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("mine")
    _refused(tmp_path, "already exists; pass --overwrite", changes=changes_gpkg)
    _refused(tmp_path, "only replaces dataset folders", changes=changes_gpkg, overwrite=True)
    assert (tmp_path / "ds" / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    _refused(tmp_path, "is not a writable folder", changes=changes_gpkg, output_dir=str(tmp_path / "file" / "ds"))


def test_failure_midway_leaves_nothing(tmp_path: Path, changes_gpkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error while tiles are written removes the staging folder; an existing dataset stays intact."""
    from changeclip.datasets import from_vectors

    make_dataset(_opts(tmp_path, changes_gpkg))
    manifest_before = (tmp_path / "ds" / "dataset.json").read_text()
    calls = {"n": 0}
    real = from_vectors.write_tile

    def failing(*a: object, **k: object) -> None:
        calls["n"] += 1
        if calls["n"] > 20:
            raise OSError(28, "No space left on device")
        real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(from_vectors, "write_tile", failing)
    with pytest.raises(OSError):
        make_dataset(_opts(tmp_path, changes_gpkg, overwrite=True, seed=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert (tmp_path / "ds" / "dataset.json").read_text() == manifest_before
    read_manifest(tmp_path / "ds")


def test_cli_from_vectors_and_info(tmp_path: Path, changes_gpkg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = main(["dataset", "from-vectors", str(NAIP_BEFORE), str(NAIP_AFTER), str(changes_gpkg), "-o", str(out),
               "--tile", "64", "--stride", "48", "--val-block-size", "640", "--where", "kind = 'building'"])
    assert rc == 0
    assert "change share" in capsys.readouterr().out
    assert main(["dataset", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["crs"].startswith("EPSG:26914")
    assert {r["split"] for r in info["splits"]} == {"train", "val"}
    assert info["manifest"]["options"]["where"] == "kind = 'building'"
    assert main(["dataset", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GSD" in text and "source before" in text
    shutil.rmtree(out)
    rc = main(["dataset", "from-vectors", str(NAIP_BEFORE), str(NAIP_AFTER), str(tmp_path / "missing.gpkg"),
               "-o", str(out)])
    assert rc == 2 and "changes layer not found" in capsys.readouterr().err and not out.exists()


def test_band_mapping_and_value_range_as_detect(tmp_path: Path, changes_gpkg: Path) -> None:
    """16-bit input: --bands 3,2,1 and --value-range map exactly as detect's scaling; the default is recorded."""
    src = read(NAIP_BEFORE).astype(np.uint16)
    gt = gdal.Open(str(NAIP_BEFORE)).GetGeoTransform()
    before = write_raster(tmp_path / "b16.tif", src * 10, gt=gt, epsg=26914)
    after = write_raster(tmp_path / "a16.tif", src * 10, gt=gt, epsg=26914)
    make_dataset(_opts(tmp_path, changes_gpkg, before=before, after=after, bands=[3, 2, 1],
                       value_range=[[0.0, 2550.0]]))
    m = read_manifest(tmp_path / "ds")
    assert m.bands == [3, 2, 1] and m.value_range == [[0.0, 2550.0]] * 3
    for t in m.splits["train"].tiles[:4]:
        p = m.tile_paths("train", t)[0]
        col, row = tile_offset(p)
        np.testing.assert_array_equal(read(p), src[::-1, row:row + 64, col:col + 64])
    make_dataset(_opts(tmp_path, changes_gpkg, before=before, after=after, overwrite=True))
    m = read_manifest(tmp_path / "ds")
    assert m.options["scaling"]["source"] == "percentile" and len(m.value_range) == 3
    lo, hi = np.percentile(src[0].astype(np.float64) * 10, [2, 98])
    assert m.value_range[0] == pytest.approx([lo, hi])
