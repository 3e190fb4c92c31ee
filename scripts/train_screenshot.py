"""Render the dock's Train page during a training run into docs/train_page.png.

Runs real QGIS offscreen with the plugin from this checkout and a real backend (as
scripts/screenshots.py does): the NAIP 2015/2020 sample pair is loaded and a change layer is made
with the page's New layer… button. An analyst would digitise the changes; here the layer is
filled with the largest polygons of an IR-MAD run on the same pair (``changeclip detect --engine
irmad --polygons``), so that the labels follow real spectral change across the scene and both the
training and the validation blocks hold some. A small network (``tiny-rn50``, from scratch: no
weights to download) trains on 64 px tiles. The page is grabbed once the chart holds a few
validations and the best validation F1 is above zero (or after ``MAX_VALIDATIONS``); the run is
then cancelled.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/train_screenshot.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# the checkout on sys.path, the offscreen platform and the backend interpreter, as make screenshots
from screenshots import ROOT, wait_for

LABEL_POLYGONS = 60
"""How many of IR-MAD's largest change polygons stand in for the analyst's digitised changes."""
MAX_VALIDATIONS = 12


def _irmad_polygons(sample: Path, out: Path) -> Path:
    """Change polygons of an IR-MAD run on the sample pair (the backend's CLI, no network)."""
    import subprocess

    cmd = [os.environ["CHANGECLIP_BACKEND_PYTHON"], "-m", "changeclip", "detect", str(sample / "naip_2015.tif"),
           str(sample / "naip_2020.tif"), "-o", str(out), "--engine", "irmad", "--polygons"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"train_screenshot: IR-MAD failed ({done.returncode}): {done.stderr[-2000:]}")
    return out / "change_polygons.gpkg"


def main() -> int:
    """Render docs/train_page.png; return 0 on success."""
    from qgis.core import (
        QgsApplication,
        QgsCoordinateReferenceSystem,
        QgsGeometry,
        QgsProject,
        QgsRasterLayer,
        QgsVectorLayer,
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
        irmad_out = Path(tempfile.mkdtemp(prefix="changeclip-train-shot-irmad-")) / "irmad"
        found = QgsVectorLayer(str(_irmad_polygons(sample, irmad_out)), "irmad")
        if not found.isValid() or found.featureCount() == 0:
            raise SystemExit("train_screenshot: IR-MAD found no change polygons on the sample pair")
        largest = sorted(found.getFeatures(), key=lambda f: f.geometry().area(), reverse=True)[:LABEL_POLYGONS]
        layer = page.new_polygon_layer("changes")
        for feature in largest:
            layer.addFeature(QgsVectorLayerUtils.createFeature(layer, QgsGeometry(feature.geometry())))
        del largest, found  # a layer still alive at exitQgis() crashes the interpreter's exit
        page.scratch_check.setChecked(True)
        page.variant_combo.setCurrentText("tiny-rn50")
        page.tile_spin.setValue(64)
        page.batch_spin.setValue(8)
        page.iterations_spin.setValue(600)
        dock.resize(440, 980)
        dock.show()
        dock.tabs.setCurrentIndex(1)
        if page.start_run() is None:
            raise SystemExit(f"train_screenshot: the page refused to run: {page.status_label.text()}")
        def enough() -> bool:
            scores = [v for _, v in page.chart.f1]
            return page.task is None or len(scores) >= MAX_VALIDATIONS or (len(scores) >= 6 and max(scores) > 0)

        wait_for(enough, 900)
        if page.task is None:
            raise SystemExit(f"train_screenshot: the run ended early: {page.status_label.text()}")
        QgsApplication.processEvents()
        target = ROOT / "docs" / "train_page.png"
        if not dock.grab().save(str(target)):
            raise SystemExit(f"train_screenshot: could not write {target}")
        print(f"wrote {target}")
        page.cancel_run()
        wait_for(lambda: page.task is None, 300)
        return 0
    finally:
        if dock is not None:
            dock.shutdown()
        LAUNCHER.stop()
        app.exitQgis()


if __name__ == "__main__":
    raise SystemExit(main())
