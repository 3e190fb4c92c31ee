"""``make screenshots``: render the dock and a result map into docs/dock.png and docs/result_map.png.

Runs real QGIS offscreen with the plugin from this checkout: the NAIP 2015/2020 sample pair is
loaded, the dock runs the unsupervised IR-MAD engine through a real backend (``changeclip serve``
from .venv; no weights needed), the styled result group is loaded, then the dock is grabbed as
a widget and the map (change mask + polygons over the 2020 image) is rendered with
QgsMapRendererParallelJob.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QGIS_CUSTOM_CONFIG_PATH", tempfile.mkdtemp(prefix="changeclip-shots-"))
os.environ.setdefault("CHANGECLIP_BACKEND_PYTHON", str(ROOT / ".venv" / "bin" / "python"))

from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsProject,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402


def wait_for(condition, timeout_s: float = 600.0) -> None:  # noqa: ANN001
    """Process Qt events until ``condition()`` holds; exit with a message after ``timeout_s``
    (also used by scripts/train_screenshot.py)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        QgsApplication.processEvents()
        if time.monotonic() > deadline:
            raise SystemExit(f"{Path(sys.argv[0]).stem}: timed out waiting for the run")
        time.sleep(0.05)


def main() -> int:
    """Render both PNGs; return 0 on success."""
    app = QgsApplication([], True)
    app.initQgis()
    from changeclip_qgis.core.backend_launcher import LAUNCHER
    from changeclip_qgis.gui.dock import ChangeClipDock

    dock = None
    try:
        sample = ROOT / "resources" / "sample"
        project = QgsProject.instance()
        before = QgsRasterLayer(str(sample / "naip_2015.tif"), "naip_2015")
        after = QgsRasterLayer(str(sample / "naip_2020.tif"), "naip_2020")
        if not (before.isValid() and after.isValid()):
            raise SystemExit(f"screenshots: the sample pair is missing from {sample}")
        project.addMapLayers([before, after])
        out_dir = Path(tempfile.gettempdir()) / "changeclip-screenshots"  # a stable name for the picture
        shutil.rmtree(out_dir, ignore_errors=True)
        dock = ChangeClipDock(None)
        dock.before_combo.setLayer(before)
        dock.after_combo.setLayer(after)
        dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
        dock.polygons_check.setChecked(True)
        dock.min_area_spin.setValue(100.0)
        dock.output_widget.setFilePath(str(out_dir))
        dock.advanced_box.setCollapsed(False)
        dock.resize(440, 900)
        dock.show()
        result: dict = {}
        dock.runFinished.connect(lambda s: result.setdefault("summary", s))
        dock.runFailed.connect(lambda m: result.setdefault("error", m))
        dock.check_backend()
        wait_for(lambda: "connecting" not in dock.backend_label.text(), 300)
        if dock.start_run() is None:
            raise SystemExit(f"screenshots: the dock refused to run: {dock.stage_label.text()}")
        wait_for(lambda: bool(result))
        if "error" in result:
            raise SystemExit(f"screenshots: the run failed: {result['error']}")
        wait_for(lambda: dock.check_task is None, 120)  # the device line refreshes after each run
        for _ in range(5):
            QgsApplication.processEvents()
            time.sleep(0.05)
        dock.widget().layout().activate()
        docs = ROOT / "docs"
        docs.mkdir(exist_ok=True)
        dock.grab().save(str(docs / "dock.png"))

        group = project.layerTreeRoot().children()[0]
        layers = [node.layer() for node in group.findLayers() if node.itemVisibilityChecked()]
        settings = QgsMapSettings()
        settings.setLayers(layers + [after])
        settings.setDestinationCrs(after.crs())
        settings.setExtent(after.extent())
        settings.setOutputSize(QSize(1024, 768))
        settings.setBackgroundColor(QColor(255, 255, 255))
        job = QgsMapRendererParallelJob(settings)
        job.start()
        job.waitForFinished()
        job.renderedImage().save(str(docs / "result_map.png"))
        print(f"wrote {docs / 'dock.png'} and {docs / 'result_map.png'}")
        return 0
    finally:
        LAUNCHER.stop()
        if dock is not None:
            dock.shutdown()
            dock.close()
            dock.deleteLater()
        QgsProject.instance().clear()
        QgsApplication.processEvents()
        app.exitQgis()


if __name__ == "__main__":
    sys.exit(main())
