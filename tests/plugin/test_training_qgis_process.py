"""Training through ``qgis_process`` with the staged plugin and a real backend it starts: createtrainingdata
and trainmodel on the NAIP sample pair with polygons written here (labels checked against an independent
``gdal.Rasterize``), and the shipped Graphical Modeler model (create training data -> train -> detect
changes with the trained weights) end to end. A TINY network, a few iterations, 64 px tiles."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.qgis, pytest.mark.server]

QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # Debian 12's /usr/bin/qgis_process wrapper is broken
REPO = Path(__file__).resolve().parents[2]
BEFORE = REPO / "resources" / "sample" / "naip_2015.tif"
AFTER = REPO / "resources" / "sample" / "naip_2020.tif"
MODEL = REPO / "resources" / "models" / "train_and_detect.model3"
X0, Y0 = 486900.0, 5208495.0  # top-left of naip_2015.tif, EPSG:26914, 5 m pixels, 512 x 384 px


def write_changes(path: Path) -> Path:
    """Four 200 m change squares, one in each quarter of the pair (so both splits hold change)."""
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(26914)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("changes", srs, ogr.wkbPolygon)
    for dx, dy in ((300, 300), (1500, 300), (300, 1200), (1500, 1200)):
        x, y = X0 + dx, Y0 - dy
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(
            f"POLYGON(({x} {y},{x + 200} {y},{x + 200} {y - 200},{x} {y - 200},{x} {y}))"))
        layer.CreateFeature(f)
    ds = None
    return path


def _env(staged_plugin: Path, tmp_path: Path, backend_python: Path) -> dict[str, str]:
    profile = tmp_path / "profile"
    ini = profile / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("[PythonPlugins]\nchangeclip_qgis=true\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHANGECLIP_")}
    # one torch thread: two per process oversubscribe a shared 2-core machine many times over
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=str(staged_plugin), QGIS_CUSTOM_CONFIG_PATH=str(profile),
               CHANGECLIP_BACKEND_PYTHON=str(backend_python), OMP_NUM_THREADS="1")
    return env


def _run(env: dict[str, str], cwd: Path, *args: str) -> dict:
    done = subprocess.run([QGIS_PROCESS, "--json", "run", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env=env, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    return json.loads(done.stdout)


def _read(path: Path) -> np.ndarray:
    from osgeo import gdal

    ds = gdal.Open(str(path))
    return ds.GetRasterBand(1).ReadAsArray()


def test_create_training_data_and_train_through_qgis_process(staged_plugin: Path, backend_python: Path,
                                                              tmp_path: Path) -> None:
    from osgeo import gdal

    env = _env(staged_plugin, tmp_path, backend_python)
    changes = write_changes(tmp_path / "changes.gpkg")
    made = _run(env, tmp_path, "changeclip:createtrainingdata", "--", f"BEFORE={BEFORE}", f"AFTER={AFTER}",
                f"CHANGES={changes}", "TILE_SIZE=64", "STRIDE=64", "VAL_FRACTION=0.3", "VAL_BLOCK_SIZE=640",
                f"OUTPUT={tmp_path / 'ds'}")
    results = made["results"]
    assert results["OUTPUT"] == str(tmp_path / "ds") and results["TRAIN_TILES"] > 0 and results["VAL_TILES"] > 0
    assert 0 < results["TRAIN_CHANGED_SHARE"] < 1 and 0 < results["VAL_CHANGED_SHARE"] < 1
    # every label tile equals GDAL's own rasterisation of the same polygons where it is labelled
    labelled = 0
    for label_path in sorted((tmp_path / "ds").glob("*/label/*.tif")):
        label = _read(label_path)
        tile = gdal.Open(str(label_path))
        mem = gdal.GetDriverByName("MEM").Create("", tile.RasterXSize, tile.RasterYSize, 1, gdal.GDT_Byte)
        mem.SetGeoTransform(tile.GetGeoTransform())
        mem.SetProjection(tile.GetProjection())
        gdal.Rasterize(mem, str(changes), burnValues=[1])
        burned = mem.GetRasterBand(1).ReadAsArray()
        valid = label != 255
        assert np.array_equal(label[valid] == 1, burned[valid] == 1), label_path
        labelled += int(valid.sum())
    assert labelled > 0.9 * 512 * 384  # no AOI: the whole overlap (less the 1 m shift's edge) is labelled

    trained = _run(env, tmp_path, "changeclip:trainmodel", "--", f"DATASETS={tmp_path / 'ds'}", "VARIANT=tiny-vit",
                   "INIT=scratch", "ITERATIONS=4", "BATCH_SIZE=2", "VAL_EVERY=2", "DEVICE=cpu",
                   f"OUTPUT={tmp_path / 'run'}")
    results = trained["results"]
    assert results["WEIGHTS"] == str(tmp_path / "run" / "best.safetensors") and Path(results["WEIGHTS"]).is_file()
    assert results["ITERATIONS_DONE"] == 4 and 0 <= results["BEST_F1"] <= 1 and 0 <= results["BEST_IOU"] <= 1
    log = "\n".join(trained["log"]["info"])
    assert "Validation at iteration 2: change precision" in log and "Validation at iteration 4" in log
    assert (tmp_path / "run" / "state.pt").is_file()  # resumable


def test_the_shipped_model_trains_and_detects_with_the_new_weights(staged_plugin: Path, backend_python: Path,
                                                                     tmp_path: Path) -> None:
    env = _env(staged_plugin, tmp_path, backend_python)
    changes = write_changes(tmp_path / "changes.gpkg")
    done = _run(env, tmp_path, str(MODEL), "--", f"BEFORE={BEFORE}", f"AFTER={AFTER}", f"CHANGES={changes}",
                "VARIANT=tiny-vit", "INIT=scratch", "ITERATIONS=2", "TILE_SIZE=64", "BATCH_SIZE=2",
                f"detectchanges:Change mask={tmp_path / 'mask.tif'}",
                f"detectchanges:Change probability={tmp_path / 'prob.tif'}",
                f"trainmodel:Run folder={tmp_path / 'run'}")
    log = "\n".join(done["log"]["info"])
    # QGIS 3.22 logs "Executed 3 algorithms in ...", QGIS 3.40 (Debian 13) "Executed 3 algorithm(s) total in ..."
    assert re.search(r"Executed 3 algorithm(s|\(s\))", log) and "Validation at iteration 2" in log, log
    assert (tmp_path / "run" / "best.safetensors").is_file()
    # no weights folder is configured here (CHANGECLIP_* unset), so detection ran with trainmodel's WEIGHTS
    mask = _read(tmp_path / "mask.tif")
    assert mask.shape == (384, 512) and set(np.unique(mask)) <= {0, 1, 255}
    summary_line = [line for line in done["log"]["info"] if line.startswith("Changed area")]
    assert summary_line, log
