"""Write ``resources/models/train_and_detect.model3``: create training data -> train -> detect changes.

The Graphical Modeler model shipped with the plugin (see docs/training-in-qgis.md). Run this
script with QGIS's Python after changing the algorithms' parameters, and commit the result:

    QT_QPA_PLATFORM=offscreen python3 scripts/make_training_model.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "resources" / "models" / "train_and_detect.model3"


def build() -> object:
    """The model: inputs BEFORE, AFTER, CHANGES, AOI, VARIANT, INIT, ITERATIONS, TILE_SIZE, BATCH_SIZE."""
    from qgis.core import (
        QgsProcessing,
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterEnum,
        QgsProcessingParameterFile,
        QgsProcessingParameterNumber,
        QgsProcessingParameterRasterLayer,
        QgsProcessingParameterVectorLayer,
    )

    model = QgsProcessingModelAlgorithm("Train a model and detect changes", "ChangeCLIP", "changeclip")
    model.setHelpContent({"ALG_DESC": (
        "Creates training data from your change polygons, trains (fine-tunes) ChangeCLIP on it, then detects "
        "changes between the same two rasters with the new weights. Defaults are a small first run; see "
        "docs/training-in-qgis.md.")})
    variants = ["rn50", "vit-b-16", "tiny-rn50", "tiny-vit"]
    inputs = [
        QgsProcessingParameterRasterLayer("BEFORE", "Before raster (earlier date)"),
        QgsProcessingParameterRasterLayer("AFTER", "After raster (later date)"),
        QgsProcessingParameterVectorLayer("CHANGES", "Change polygons", [QgsProcessing.TypeVectorPolygon]),
        QgsProcessingParameterVectorLayer("AOI", "Area where the labels are complete (AOI)",
                                          [QgsProcessing.TypeVectorPolygon], optional=True),
        QgsProcessingParameterEnum("VARIANT", "Network variant", options=variants, defaultValue="rn50",
                                   usesStaticStrings=True),
        QgsProcessingParameterFile("INIT", "Start from (weights file, clip:FILE, clip:openai, scratch; empty = "
                                           "the settings' weights)", optional=True),
        QgsProcessingParameterNumber("ITERATIONS", "Iterations", QgsProcessingParameterNumber.Integer, 500,
                                     minValue=1),
        QgsProcessingParameterNumber("TILE_SIZE", "Tile size (px)", QgsProcessingParameterNumber.Integer, 256,
                                     minValue=64, maxValue=4096),
        QgsProcessingParameterNumber("BATCH_SIZE", "Batch size (empty = recipe)",
                                     QgsProcessingParameterNumber.Integer, None, optional=True, minValue=1),
    ]
    inputs[5].setFileFilter("All files (*)")
    for i, definition in enumerate(inputs):
        component = QgsProcessingModelParameter(definition.name())
        component.setPosition(_point(120, 60 + 70 * i))
        model.addModelParameter(definition, component)

    def param(name: str) -> object:
        return QgsProcessingModelChildParameterSource.fromModelParameter(name)

    def static(value: object) -> object:
        return QgsProcessingModelChildParameterSource.fromStaticValue(value)

    def child_output(child: str, output: str) -> object:
        return QgsProcessingModelChildParameterSource.fromChildOutput(child, output)

    data = QgsProcessingModelChildAlgorithm("changeclip:createtrainingdata")
    data.setChildId("createtrainingdata")
    data.setDescription("Create training data")
    data.setPosition(_point(450, 150))
    for name in ("BEFORE", "AFTER", "CHANGES", "AOI", "TILE_SIZE"):
        data.addParameterSources(name, [param(name)])
    data.addParameterSources("STRIDE", [param("TILE_SIZE")])  # tiles side by side: no overlap
    model.addChildAlgorithm(data)

    train = QgsProcessingModelChildAlgorithm("changeclip:trainmodel")
    train.setChildId("trainmodel")
    train.setDescription("Train a model")
    train.setPosition(_point(450, 350))
    train.addParameterSources("DATASETS", [child_output("createtrainingdata", "OUTPUT")])
    for name in ("VARIANT", "INIT", "ITERATIONS", "BATCH_SIZE"):
        train.addParameterSources(name, [param(name)])
    run_out = QgsProcessingModelOutput("Run folder", "Run folder")
    run_out.setChildOutputName("OUTPUT")
    run_out.setChildId("trainmodel")
    train.setModelOutputs({"Run folder": run_out})
    model.addChildAlgorithm(train)

    detect = QgsProcessingModelChildAlgorithm("changeclip:detectchanges")
    detect.setChildId("detectchanges")
    detect.setDescription("Detect changes with the new weights")
    detect.setPosition(_point(450, 550))
    detect.addParameterSources("BEFORE", [param("BEFORE")])
    detect.addParameterSources("AFTER", [param("AFTER")])
    detect.addParameterSources("WEIGHTS", [child_output("trainmodel", "WEIGHTS")])
    detect.addParameterSources("ENGINE", [static("changeclip")])
    detect.addParameterSources("PROMPT_MODE", [static("none")])
    outputs = {}
    for key, name in (("CHANGE_MASK", "Change mask"), ("CHANGE_PROBABILITY", "Change probability")):
        out = QgsProcessingModelOutput(name, name)
        out.setChildOutputName(key)
        out.setChildId("detectchanges")
        outputs[name] = out
    detect.setModelOutputs(outputs)
    model.addChildAlgorithm(detect)
    return model


def _point(x: float, y: float) -> object:
    from qgis.PyQt.QtCore import QPointF

    return QPointF(x, y)


def main() -> int:
    """Build the model (with the plugin's provider registered, so the children resolve) and save it."""
    sys.path.insert(0, str(ROOT))
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    from changeclip_qgis.processing.provider import ChangeClipProvider

    QgsApplication.processingRegistry().addProvider(ChangeClipProvider())
    model = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    if not model.toFile(str(OUT)):  # type: ignore[attr-defined]
        raise SystemExit(f"could not write {OUT}")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
