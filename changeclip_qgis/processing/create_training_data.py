"""Processing algorithm ``changeclip:createtrainingdata``: a training-data folder from digitised changes.

Runs ``changeclip dataset from-vectors`` as a backend job (``kind`` ``dataset``). The change
polygons (and the optional AOI) are checked in QGIS first (:mod:`..core.training_inputs`), then
handed to the backend as files: a layer that is not a file, has a filter, or of which only the
selected features are used is written to a temporary GeoPackage first.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from ..compat import (
    NUMBER_DOUBLE,
    NUMBER_INTEGER,
    PARAMETER_ADVANCED,
    SOURCE_VECTOR_ANY,
)
from ..core import protocol
from ..core.training_inputs import TrainingInputError, check_training_polygons
from .backend_algorithm import BackendAlgorithm
from .job_feedback import raster_path, run_backend_job

VECTOR_FORMATS = ["gpkg", "shp", "geojson", "json", "fgb", "sqlite", "kml", "gml", "tab"]
"""Files the backend (OGR) reads as they are; anything else is exported to a GeoPackage."""


class CreateTrainingDataAlgorithm(BackendAlgorithm):
    """Cut aligned before/after tiles and 0/1/255 labels from digitised change polygons."""

    group_name = "Training"
    group_id = "training"

    BEFORE = "BEFORE"
    AFTER = "AFTER"
    CHANGES = "CHANGES"
    AOI = "AOI"
    BANDS = "BANDS"
    TILE_SIZE = "TILE_SIZE"
    STRIDE = "STRIDE"
    VAL_FRACTION = "VAL_FRACTION"
    VAL_BLOCK_SIZE = "VAL_BLOCK_SIZE"
    KEEP_EMPTY = "KEEP_EMPTY"
    OUTPUT = "OUTPUT"
    TRAIN_TILES = "TRAIN_TILES"
    VAL_TILES = "VAL_TILES"
    TRAIN_CHANGED_SHARE = "TRAIN_CHANGED_SHARE"
    VAL_CHANGED_SHARE = "VAL_CHANGED_SHARE"

    def name(self) -> str:  # noqa: D102
        return "createtrainingdata"

    def displayName(self) -> str:  # noqa: D102
        return "Create training data (ChangeCLIP)"

    def tags(self) -> list[str]:  # noqa: D102
        return ["change", "training", "dataset", "labels", "changeclip", "deep learning"]

    def shortHelpString(self) -> str:  # noqa: D102
        return (
            "Makes a training-data folder for 'Train a model (ChangeCLIP)' from two dates of imagery and the "
            "changes you digitised.\n\n"
            "BEFORE and AFTER are aligned exactly as change detection aligns them. CHANGES is a polygon layer of "
            "the changes (any CRS; tick 'Selected features only' to use a selection). AOI (optional) outlines "
            "where your labels are complete: inside it, pixels not covered by a change polygon are 'no change'; "
            "outside it (and where either date has no data) they are ignored. Without an AOI the whole overlap "
            "of the two rasters counts as labelled, so every unmarked change there teaches the network that it "
            "is no change.\n"
            "BANDS are the 1-based R,G,B bands. Tiles of TILE_SIZE px are cut every STRIDE px; VAL_FRACTION of "
            "them go to validation in whole square blocks of VAL_BLOCK_SIZE metres (default: four tiles), so "
            "validation measures new ground; KEEP_EMPTY is the share of training tiles without change kept.\n\n"
            "Outputs: the dataset folder (OUTPUT), TRAIN_TILES and VAL_TILES, and the share of changed pixels "
            "among the labelled ones per split (TRAIN_CHANGED_SHARE, VAL_CHANGED_SHARE).\n"
            "Runs in the ChangeCLIP backend (docs/training-in-qgis.md).")

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: D102
        self.addParameter(QgsProcessingParameterRasterLayer(self.BEFORE, "Before raster (earlier date)"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AFTER, "After raster (later date)"))
        # Any geometry type is accepted here so that a point or line layer gets a message saying what to
        # do (a polygon-only parameter would only say "incorrect parameter value").
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.CHANGES, "Change polygons", [SOURCE_VECTOR_ANY]))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AOI, "Area where the labels are complete (AOI)", [SOURCE_VECTOR_ANY],
            optional=True))
        advanced = [
            QgsProcessingParameterString(self.BANDS, "Bands (R,G,B, 1-based)", defaultValue="1,2,3"),
            QgsProcessingParameterNumber(self.TILE_SIZE, "Tile size (px, multiple of 32)",
                                         NUMBER_INTEGER, 256, minValue=64, maxValue=4096),
            QgsProcessingParameterNumber(self.STRIDE, "Stride between tiles (px)",
                                         NUMBER_INTEGER, 192, minValue=1, maxValue=4096),
            QgsProcessingParameterNumber(self.VAL_FRACTION, "Validation share of the tiles",
                                         NUMBER_DOUBLE, 0.15, minValue=0.01, maxValue=0.9),
            QgsProcessingParameterNumber(self.VAL_BLOCK_SIZE, "Validation block size (m, empty = four tiles)",
                                         NUMBER_DOUBLE, None, optional=True, minValue=1.0),
            QgsProcessingParameterNumber(self.KEEP_EMPTY, "Share of training tiles without change kept",
                                         NUMBER_DOUBLE, 1.0, minValue=0.0, maxValue=1.0),
        ]
        for param in advanced:
            param.setFlags(param.flags() | PARAMETER_ADVANCED)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Training data folder"))
        self.addOutput(QgsProcessingOutputNumber(self.TRAIN_TILES, "Training tiles"))
        self.addOutput(QgsProcessingOutputNumber(self.VAL_TILES, "Validation tiles"))
        self.addOutput(QgsProcessingOutputNumber(self.TRAIN_CHANGED_SHARE, "Changed-pixel share (training)"))
        self.addOutput(QgsProcessingOutputNumber(self.VAL_CHANGED_SHARE, "Changed-pixel share (validation)"))

    def _vector_path(self, parameters: dict[str, Any], key: str, context: QgsProcessingContext,
                     feedback: QgsProcessingFeedback) -> tuple[str, str | None]:
        """A file the backend reads for a feature-source parameter (a temporary GeoPackage when the
        layer is not a file, is filtered, or only its selected features are used)."""
        path, layer_name = self.parameterAsCompatibleSourceLayerPathAndLayerName(
            parameters, key, context, VECTOR_FORMATS, "gpkg", feedback)
        if not path:
            raise QgsProcessingException(self.invalidSourceError(parameters, key))
        return path, (layer_name or None)

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:  # noqa: D102
        before_layer = self.parameterAsRasterLayer(parameters, self.BEFORE, context)
        after_layer = self.parameterAsRasterLayer(parameters, self.AFTER, context)
        changes = self.parameterAsSource(parameters, self.CHANGES, context)
        if changes is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.CHANGES))
        aoi = self.parameterAsSource(parameters, self.AOI, context) if parameters.get(self.AOI) else None
        if before_layer is None or after_layer is None:
            raise QgsProcessingException("BEFORE and AFTER must be raster layers")
        try:  # every check of the polygons before anything is exported or sent
            for warning in check_training_polygons(changes, aoi, before_layer, after_layer,
                                                   context.transformContext()):
                feedback.pushWarning(warning)
            bands = protocol.parse_bands(self.parameterAsString(parameters, self.BANDS, context) or "1,2,3")
        except (TrainingInputError, protocol.ParamError) as exc:
            raise QgsProcessingException(str(exc)) from None
        output = self.parameterAsString(parameters, self.OUTPUT, context)
        work_dir = os.path.join(QgsProcessingUtils.tempFolder(), f"changeclip_{uuid.uuid4().hex[:12]}")
        os.makedirs(work_dir, exist_ok=True)
        before = raster_path(before_layer, after_layer, self.BEFORE, work_dir, context, feedback)
        after = raster_path(after_layer, before_layer, self.AFTER, work_dir, context, feedback)
        changes_path, changes_layer = self._vector_path(parameters, self.CHANGES, context, feedback)
        aoi_path, aoi_layer = self._vector_path(parameters, self.AOI, context, feedback) if aoi else (None, None)
        block = self.parameterAsDouble(parameters, self.VAL_BLOCK_SIZE, context) \
            if parameters.get(self.VAL_BLOCK_SIZE) not in (None, "") else None
        try:
            params = protocol.DatasetParams(
                before=os.path.abspath(before), after=os.path.abspath(after), changes=os.path.abspath(changes_path),
                output_dir=os.path.abspath(output), layer=changes_layer,
                aoi=os.path.abspath(aoi_path) if aoi_path else None, aoi_layer=aoi_layer, bands=bands,
                tile=self.parameterAsInt(parameters, self.TILE_SIZE, context),
                stride=self.parameterAsInt(parameters, self.STRIDE, context),
                val_fraction=self.parameterAsDouble(parameters, self.VAL_FRACTION, context),
                val_block_size=block, keep_empty=self.parameterAsDouble(parameters, self.KEEP_EMPTY, context),
                overwrite=True)
            params.validate()
        except protocol.ParamError as exc:
            raise QgsProcessingException(f"{exc.field.upper()}: {exc.message}") from None
        summary = run_backend_job(params, feedback)
        rows = {row["split"]: row for row in summary.get("splits") or []}
        for name in ("train", "val"):
            row = rows.get(name, {})
            share = row.get("change_share")
            feedback.pushInfo(f"{name}: {row.get('tiles', 0)} tiles, changed pixels "
                              f"{'-' if share is None else f'{100 * share:.2f} %'} of the labelled ones")
        return {self.OUTPUT: output,
                self.TRAIN_TILES: int(rows.get("train", {}).get("tiles", 0)),
                self.VAL_TILES: int(rows.get("val", {}).get("tiles", 0)),
                self.TRAIN_CHANGED_SHARE: rows.get("train", {}).get("change_share"),
                self.VAL_CHANGED_SHARE: rows.get("val", {}).get("change_share")}
