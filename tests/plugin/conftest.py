"""Plugin test fixtures: one real QgsApplication (offscreen) with Processing for the session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # import changeclip_qgis from the checkout

os.environ["QT_QPA_PLATFORM"] = "offscreen"
_CONFIG_DIR = tempfile.mkdtemp(prefix="changeclip-qgis-profile-")
os.environ["QGIS_CUSTOM_CONFIG_PATH"] = _CONFIG_DIR


@pytest.fixture(scope="session")
def qgis_app() -> Iterator[object]:
    """A QgsApplication (GUI-capable, offscreen) with Processing initialised."""
    from qgis.core import QgsApplication

    app = QgsApplication([], True)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    yield app
    from changeclip_qgis.core.backend_launcher import LAUNCHER

    LAUNCHER.stop()
    app.exitQgis()


@pytest.fixture(scope="module")
def provider(qgis_app: object):  # noqa: ANN201
    """The ``changeclip`` Processing provider, registered for the test module (if it was not already)."""
    from qgis.core import QgsApplication

    from changeclip_qgis.processing.provider import ChangeClipProvider

    registry = QgsApplication.processingRegistry()
    prov = registry.providerById("changeclip")
    added = prov is None
    if added:
        prov = ChangeClipProvider()
        registry.addProvider(prov)
    yield prov
    if added:
        registry.removeProvider(prov)


@pytest.fixture()
def project(qgis_app: object) -> Iterator[object]:
    """The current project, emptied before and after the test."""
    from qgis.core import QgsProject

    proj = QgsProject.instance()
    proj.clear()
    yield proj
    proj.clear()


@pytest.fixture(scope="session")
def backend_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter for the plugin's backend setting: this venv's Python running the checkout's backend.

    The launcher starts the backend with PYTHONPATH removed, so ``sys.executable`` alone would run
    whatever ``changeclip`` the venv's editable install points at (another checkout, possibly);
    this small wrapper puts this checkout's ``backend/`` first, so the tests exercise the code
    under test on both sides of the protocol.
    """
    wrapper = tmp_path_factory.mktemp("backend-python") / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO_ROOT / "backend"}" exec "{sys.executable}" "$@"\n',
                       encoding="utf-8")
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture()
def backend_env(monkeypatch: pytest.MonkeyPatch, backend_python: str) -> None:
    """Point the plugin at this venv's interpreter (which has the backend), running this checkout's backend."""
    monkeypatch.setenv("CHANGECLIP_BACKEND_PYTHON", backend_python)
    monkeypatch.delenv("CHANGECLIP_BACKEND_URL", raising=False)
    monkeypatch.delenv("CHANGECLIP_TOKEN_FILE", raising=False)


def write_geotiff(path: Path, array: np.ndarray, epsg: int = 32633, origin: tuple[float, float] = (500000.0, 4500000.0),
                  pixel: float = 2.0, nodata: float | None = None) -> Path:
    """Write a (bands, H, W) array as a GeoTIFF."""
    from osgeo import gdal, osr

    bands, height, width = array.shape
    dtype = {np.dtype("uint8"): gdal.GDT_Byte, np.dtype("float32"): gdal.GDT_Float32,
             np.dtype("uint16"): gdal.GDT_UInt16}[array.dtype]
    ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, bands, dtype)
    ds.SetGeoTransform((origin[0], pixel, 0.0, origin[1], 0.0, -pixel))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds.SetProjection(srs.ExportToWkt())
    for i in range(bands):
        band = ds.GetRasterBand(i + 1)
        band.WriteArray(array[i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    ds = None
    return path


@pytest.fixture()
def raster_pair_without_crs(raster_pair: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """:func:`raster_pair` copied with their CRS removed (same pixel grid): areas are unknown."""
    from osgeo import gdal

    copies = []
    for path in raster_pair:
        copy = tmp_path / f"nocrs_{path.name}"
        gdal.Translate(str(copy), str(path))
        ds = gdal.Open(str(copy), gdal.GA_Update)
        ds.SetSpatialRef(None)
        ds = None  # closes (and writes) the file
        copies.append(copy)
    return copies[0], copies[1]


@pytest.fixture()
def geotiff() -> Callable[..., Path]:
    """:func:`write_geotiff`, for tests that write their own rasters."""
    return write_geotiff


@pytest.fixture()
def raster_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A 128x128 3-band uint8 pair; the after image has a bright 32x32 square (the change)."""
    rng = np.random.default_rng(0)
    base = rng.integers(60, 120, size=(3, 128, 128)).astype(np.uint8)
    after = base.copy()
    after[:, 40:72, 50:82] = 230
    after = np.clip(after.astype(np.int16) + rng.integers(-3, 4, size=after.shape), 0, 255).astype(np.uint8)
    return (write_geotiff(tmp_path / "before.tif", base), write_geotiff(tmp_path / "after.tif", after))


def wait_for(condition: Callable[[], bool], timeout_s: float = 300.0) -> None:
    """Pump Qt events until ``condition()`` holds (fails the test after ``timeout_s``)."""
    from qgis.core import QgsApplication

    deadline = time.monotonic() + timeout_s
    while not condition():
        QgsApplication.processEvents()
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(0.05)


@pytest.fixture()
def mock_iface(qgis_app: object):  # noqa: ANN201
    """A Mock(spec=QgisInterface) with a real main window, canvas, message bar and toolbars."""
    from unittest import mock

    from qgis.gui import QgisInterface, QgsMapCanvas, QgsMessageBar
    from qgis.PyQt.QtWidgets import QMainWindow

    window = QMainWindow()
    canvas = QgsMapCanvas(window)
    bar = QgsMessageBar(window)
    iface = mock.Mock(spec=QgisInterface)
    iface.mainWindow.return_value = window
    iface.mapCanvas.return_value = canvas
    iface.messageBar.return_value = bar
    iface.addToolBar.side_effect = window.addToolBar
    iface.addDockWidget.side_effect = window.addDockWidget
    iface.removeDockWidget.side_effect = window.removeDockWidget
    yield iface
    window.deleteLater()


@pytest.fixture()
def xyz_uri(tmp_path: Path) -> str:
    """URI of an XYZ tile layer (file:// tiles, zoom 0-1, each tile one flat colour): a non-file raster."""
    from qgis.PyQt.QtGui import QColor, QImage

    tiles = tmp_path / "tiles"
    for z, x, y in ((0, 0, 0), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)):
        (tiles / str(z) / str(x)).mkdir(parents=True, exist_ok=True)
        image = QImage(256, 256, QImage.Format.Format_RGB32)
        image.fill(QColor(10, 20, 30) if z == 0 else QColor(50 + 100 * x, 80 + 100 * y, 120))
        assert image.save(str(tiles / str(z) / str(x) / f"{y}.png"))
    return f"type=xyz&url=file://{tiles}/{{z}}/{{x}}/{{y}}.png&zmax=1&zmin=0"


@pytest.fixture()
def pump() -> Callable[..., None]:
    """:func:`wait_for`, as a fixture (test modules here are not a package)."""
    return wait_for


@pytest.fixture(scope="session")
def staged_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installable plugin staged by scripts/package.py (DIR containing changeclip_qgis/)."""
    stage = tmp_path_factory.mktemp("plugins")
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "package.py"), "--stage", str(stage)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"package.py --stage failed:\n{done.stdout}\n{done.stderr}"
    assert (stage / "changeclip_qgis" / "metadata.txt").is_file()
    return stage
