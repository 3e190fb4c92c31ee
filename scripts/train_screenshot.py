"""Render the dock's Train page during a training run into docs/train_page.png.

Runs real QGIS offscreen with the plugin from this checkout and a real backend (as
scripts/screenshots.py does): the NAIP 2015/2020 sample pair is loaded, a change layer is made
with the page's New layer… button and four change squares are added to it, and a small network
(``tiny-vit``, from scratch: no weights to download) trains on 64 px tiles. The page is grabbed
once the chart holds a few validations; the run is then cancelled.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/train_screenshot.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QGIS_CUSTOM_CONFIG_PATH", tempfile.mkdtemp(prefix="changeclip-shots-"))
os.environ.setdefault("CHANGECLIP_BACKEND_PYTHON", str(ROOT / ".venv" / "bin" / "python"))

X0, Y0 = 486900.0, 5208495.0  # top-left of naip_2015.tif, EPSG:26914


def _wait(condition, timeout_s: float = 900.0) -> None:  # noqa: ANN001
    from qgis.core import QgsApplication

    deadline = time.monotonic() + timeout_s
    while not condition():
        QgsApplication.processEvents()
        if time.monotonic() > deadline:
            raise SystemExit("train_screenshot: timed out waiting for the run")
        time.sleep(0.05)


def main() -> int:
    """Render docs/train_page.png; return 0 on success."""
    from qgis.core import (
        QgsApplication,
        QgsCoordinateReferenceSystem,
        QgsGeometry,
        QgsProject,
        QgsRasterLayer,
        QgsVectorLayerUtils,
    )

    app = QgsApplication([], True)
    app.initQgis()
    from changeclip_qgis.core.backend_launcher import LAUNCHER
    from changeclip_qgis.gui.dock import ChangeClipDock

    dock = None
    try:
        sample = ROOT / "resources" / "sample"
        project = QgsProject.instance()
        project.setCrs(QgsCoordinateReferenceSystem("EPSG:26914"))
        before = QgsRasterLayer(str(sample / "naip_2015.tif"), "naip_2015")
        after = QgsRasterLayer(str(sample / "naip_2020.tif"), "naip_2020")
        project.addMapLayers([before, after])
        dock = ChangeClipDock(None)
        page = dock.train_page
        out = Path(tempfile.mkdtemp(prefix="changeclip-train-shot-"))
        page.output_widget.setFilePath(str(out))
        page.before_combo.setLayer(before)
        page.after_combo.setLayer(after)
        layer = page.new_polygon_layer("changes")
        for dx, dy in ((300, 300), (1500, 300), (300, 1200), (1500, 1200), (900, 700)):
            x, y = X0 + dx, Y0 - dy
            geometry = QgsGeometry.fromWkt(f"POLYGON(({x} {y},{x + 200} {y},{x + 200} {y - 200},{x} {y - 200},"
                                           f"{x} {y}))")
            layer.addFeature(QgsVectorLayerUtils.createFeature(layer, geometry))
        page.scratch_check.setChecked(True)
        page.variant_combo.setCurrentText("tiny-vit")
        page.tile_spin.setValue(64)
        page.batch_spin.setValue(4)
        page.iterations_spin.setValue(200)
        dock.resize(440, 980)
        dock.show()
        dock.tabs.setCurrentIndex(1)
        if page.start_run() is None:
            raise SystemExit(f"train_screenshot: the page refused to run: {page.status_label.text()}")
        _wait(lambda: len(page.chart.f1) >= 6 or page.task is None)
        if page.task is None:
            raise SystemExit(f"train_screenshot: the run ended early: {page.status_label.text()}")
        QgsApplication.processEvents()
        target = ROOT / "docs" / "train_page.png"
        if not dock.grab().save(str(target)):
            raise SystemExit(f"train_screenshot: could not write {target}")
        print(f"wrote {target}")
        page.cancel_run()
        _wait(lambda: page.task is None, 300)
        return 0
    finally:
        if dock is not None:
            dock.shutdown()
        LAUNCHER.stop()
        app.exitQgis()


if __name__ == "__main__":
    raise SystemExit(main())
