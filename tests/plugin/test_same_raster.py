"""Before = After is refused the same way by the dock and by Processing (checkParameterValues),
before any work: one shared check, one message."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis


def _check(alg, parameters: dict) -> tuple[bool, str]:  # noqa: ANN001
    from qgis.core import QgsProcessingContext, QgsProject

    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    return alg.checkParameterValues(parameters, context)


def test_processing_and_dock_refuse_one_raster_twice(provider: object, project, raster_pair: tuple[Path, Path],  # noqa: ANN001
                                                     tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsApplication, QgsProcessingException, QgsRasterLayer

    from changeclip_qgis.core.errors import ChangeClipPluginError
    from changeclip_qgis.gui.dock import ChangeClipDock

    before, after = raster_pair
    alg = QgsApplication.processingRegistry().createAlgorithmById("changeclip:detectchanges")
    outputs = {"CHANGE_MASK": str(tmp_path / "m.tif"), "CHANGE_PROBABILITY": str(tmp_path / "p.tif"),
               "ENGINE": "irmad", "PROMPT_MODE": "none"}
    ok, message = _check(alg, {"BEFORE": str(before), "AFTER": str(before), **outputs})
    assert not ok
    assert message == ("Before and After are the same raster ('before'): the result would be 'no change' "
                       "everywhere; pick the raster of the other date")
    assert _check(alg, {"BEFORE": str(before), "AFTER": str(after), **outputs}) == (True, "")
    # the same file loaded twice, as two layers of the project, is still one raster
    first, second = QgsRasterLayer(str(before), "2015 a"), QgsRasterLayer(str(before), "2015 b")
    other = QgsRasterLayer(str(after), "2020")
    project.addMapLayers([first, second, other])
    ok, by_layer = _check(alg, {"BEFORE": first.id(), "AFTER": second.id(), **outputs})
    assert not ok and by_layer.startswith("Before and After are the same raster ('2015 a')")
    with pytest.raises(QgsProcessingException, match="same raster"):  # refused before anything runs
        processing.run("changeclip:detectchanges", {"BEFORE": first.id(), "AFTER": second.id(), **outputs})
    assert not (tmp_path / "m.tif").exists()

    dock = ChangeClipDock(None)
    try:
        dock.before_combo.setLayer(first)
        dock.after_combo.setLayer(second)
        with pytest.raises(ChangeClipPluginError) as refused:
            dock.collect()
        assert str(refused.value) == by_layer, "the dock and Processing must say the same"
        dock.after_combo.setLayer(first)
        with pytest.raises(ChangeClipPluginError, match="same raster"):
            dock.collect()
        dock.after_combo.setLayer(other)
        dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
        params, _exports, _name = dock.collect()
        assert Path(params.after) == after
    finally:
        dock.deleteLater()
