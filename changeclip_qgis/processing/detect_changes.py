"""Processing algorithm ``changeclip:detectchanges``: the same job as the dock, driven by feedback.

It works in the toolbox, in batch mode, in the Graphical Modeler, from ``processing.run`` and
from ``qgis_process run changeclip:detectchanges``; it never uses ``iface``.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingParameterCrs,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingUtils,
    QgsRasterLayer,
)
from qgis.PyQt.QtGui import QIcon

from ..core import protocol
from ..core.backend_launcher import LAUNCHER, configuration_problem
from ..core.errors import ChangeClipPluginError, JobCancelledError
from ..core.layers import (
    ExportRequest,
    apply_style,
    local_raster_path,
    prepare_input,
    run_export,
    write_sidecar_style,
)
from ..core.params import build_params, grid_choice
from ..core.paths import icon_path
from ..core.runner import progress_percent, progress_text, result_line, run_detection, runtime_line
from ..core.settings import BackendConfig

MIN_RESOLUTION = 1e-9
"""Smallest RESOLUTION Processing accepts (it must be > 0; 1e-9 is below any real pixel size)."""

_POST_PROCESSORS: list[QgsProcessingLayerPostProcessorInterface] = []
"""Keeps the style post-processors alive until QGIS has called them (QGIS does not own them)."""


class _StyleOutput(QgsProcessingLayerPostProcessorInterface):
    """Applies the bundled QML style to an output layer that Processing loads."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: ANN001, N802, D102
        apply_style(layer, self.kind)

    @classmethod
    def create(cls, kind: str) -> _StyleOutput:
        processor = cls(kind)
        _POST_PROCESSORS.append(processor)
        del _POST_PROCESSORS[:-1000]  # bounded; a batch loads its rows at the end
        return processor


class DetectChangesAlgorithm(QgsProcessingAlgorithm):
    """Detect changes between a before and an after raster with ChangeCLIP or IR-MAD."""

    BEFORE = "BEFORE"
    AFTER = "AFTER"
    PROMPT = "PROMPT"
    PROMPT_MODE = "PROMPT_MODE"
    ENGINE = "ENGINE"
    WEIGHTS = "WEIGHTS"
    BANDS = "BANDS"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    THRESHOLD = "THRESHOLD"
    DEVICE = "DEVICE"
    PRECISION = "PRECISION"
    RUNTIME = "RUNTIME"
    MIN_AREA = "MIN_AREA"
    OUTPUT_GRID = "OUTPUT_GRID"
    TARGET_CRS = "TARGET_CRS"
    RESOLUTION = "RESOLUTION"
    EXTENT = "EXTENT"
    CHANGE_MASK = "CHANGE_MASK"
    CHANGE_PROBABILITY = "CHANGE_PROBABILITY"
    CHANGE_POLYGONS = "CHANGE_POLYGONS"
    CHANGED_AREA_M2 = "CHANGED_AREA_M2"
    CHANGED_FRACTION = "CHANGED_FRACTION"
    SUMMARY = "SUMMARY"

    # -- identity ------------------------------------------------------------------

    def name(self) -> str:  # noqa: D102
        return "detectchanges"

    def displayName(self) -> str:  # noqa: D102
        return "Detect changes (ChangeCLIP)"

    def group(self) -> str:  # noqa: D102
        return "Change detection"

    def groupId(self) -> str:  # noqa: D102
        return "changedetection"

    def icon(self) -> QIcon:  # noqa: D102
        return QIcon(str(icon_path()))

    def tags(self) -> list[str]:  # noqa: D102
        return ["change", "detection", "bitemporal", "clip", "changeclip", "irmad", "deep learning"]

    def shortHelpString(self) -> str:  # noqa: D102
        return (
            "Finds what changed between a BEFORE and an AFTER raster of the same area.\n\n"
            "ENGINE changeclip runs the ChangeCLIP network (needs a WEIGHTS file, or a weights folder set in "
            "the plugin settings / CHANGECLIP_WEIGHTS_DIR); irmad is unsupervised IR-MAD and needs no weights.\n"
            "PROMPT_MODE: auto = CLIP tags per tile plus your PROMPT words; none = no prompt words; "
            "words = only your PROMPT words (e.g. 'building, road').\n"
            "The rasters may differ in CRS, resolution and grid: both are aligned onto one output grid, "
            "OUTPUT_GRID (advanced): before (default) = the BEFORE raster's grid; after = the AFTER raster's "
            "grid (e.g. when it is the coarser one); custom = a north-up grid in TARGET_CRS with RESOLUTION "
            "CRS units per pixel (metres for UTM, e.g. EPSG:32633 at 1), over the area both rasters cover. "
            "TARGET_CRS and RESOLUTION are only used, and both needed, with custom.\n"
            "BANDS are the 1-based R,G,B bands of both rasters. Layers that are not local files (WMS/XYZ, "
            "virtual rasters) are exported to a temporary GeoTIFF first: of EXTENT, else of the other raster's "
            "extent, on the other raster's pixel grid (with OUTPUT_GRID custom: straight onto the custom "
            "grid); such an exported layer has no grid of its own, so OUTPUT_GRID before/after then means "
            "the grid it was exported on.\n"
            "DEVICE auto uses the first GPU, else the CPU. PRECISION auto is fp32 on the CPU and bf16 (or fp16) "
            "on a GPU; bf16 on a CPU with AMX or AVX-512 BF16 is 2-3x faster than fp32. PRECISION int8 runs a "
            "quantised network calibrated on sample tiles of the two rasters (CPU only; its agreement with fp32 is "
            "in the summary). RUNTIME auto runs the network with PyTorch on a GPU and with the fastest measured "
            "CPU runtime (OpenVINO or ONNX Runtime) on the CPU; torch, onnxruntime or openvino force one.\n\n"
            "Outputs: CHANGE_MASK (1 = change, 0 = no change, 255 = nodata), CHANGE_PROBABILITY (percent), "
            "optional CHANGE_POLYGONS (GeoPackage, polygons smaller than MIN_AREA m² dropped), and the numbers "
            "CHANGED_AREA_M2 (empty when the rasters have no CRS) and CHANGED_FRACTION (of the valid area) for "
            "models; SUMMARY optionally saves the run's summary.json. Warnings of the run (no CRS, resampled "
            "inputs, …) appear in the log.\n\n"
            "The computation runs in the ChangeCLIP backend process (started automatically; see the plugin's "
            "'Set up backend…' and Diagnostics).")

    def createInstance(self) -> DetectChangesAlgorithm:  # noqa: D102
        return type(self)()

    def flags(self) -> QgsProcessingAlgorithm.Flags:  # noqa: D102
        return super().flags() | QgsProcessingAlgorithm.FlagCanCancel | QgsProcessingAlgorithm.FlagSupportsBatch

    def canExecute(self) -> tuple[bool, str]:  # noqa: D102
        problem = configuration_problem()
        return (problem is None, problem or "")

    # -- parameters ----------------------------------------------------------------

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: D102
        self.addParameter(QgsProcessingParameterRasterLayer(self.BEFORE, "Before raster (earlier date)"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AFTER, "After raster (later date)"))
        self.addParameter(QgsProcessingParameterString(self.PROMPT, "Prompt words (e.g. building, road)",
                                                       defaultValue="", optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.PROMPT_MODE, "Prompt mode", options=list(protocol.PROMPT_MODES), defaultValue="auto",
            usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.ENGINE, "Engine", options=list(protocol.ENGINES), defaultValue="changeclip",
            usesStaticStrings=True))
        weights = QgsProcessingParameterFile(self.WEIGHTS, "Weights file (changeclip engine)", optional=True,
                                             fileFilter="Weights (*.safetensors *.pth *.pt);;All files (*.*)")
        self.addParameter(weights)
        advanced = [
            QgsProcessingParameterString(self.BANDS, "Bands (R,G,B, 1-based)", defaultValue="1,2,3"),
            QgsProcessingParameterNumber(self.TILE_SIZE, "Tile size (px, multiple of 32)",
                                         QgsProcessingParameterNumber.Integer, 256, minValue=64, maxValue=4096),
            QgsProcessingParameterNumber(self.OVERLAP, "Tile overlap (px)", QgsProcessingParameterNumber.Integer,
                                         64, minValue=0, maxValue=2047),
            QgsProcessingParameterNumber(self.THRESHOLD, "Change threshold (0-1, empty = engine default)",
                                         QgsProcessingParameterNumber.Double, None, optional=True,
                                         minValue=0.0, maxValue=1.0),
            QgsProcessingParameterString(self.DEVICE, f"Device ({protocol.DEVICES_HELP})", defaultValue="auto"),
            QgsProcessingParameterEnum(self.PRECISION, "Precision (auto: fp32 on CPU, bf16/fp16 on GPU)",
                                       options=list(protocol.PRECISIONS), defaultValue="auto",
                                       usesStaticStrings=True),
            QgsProcessingParameterEnum(self.RUNTIME, "Runtime (auto: torch on GPU, fastest CPU runtime on CPU)",
                                       options=list(protocol.RUNTIMES), defaultValue="auto",
                                       usesStaticStrings=True),
            QgsProcessingParameterNumber(self.MIN_AREA, "Minimum polygon area (m²)",
                                         QgsProcessingParameterNumber.Double, 0.0, minValue=0.0),
            QgsProcessingParameterEnum(self.OUTPUT_GRID, "Output grid", options=list(protocol.GRIDS),
                                       defaultValue="before", usesStaticStrings=True),
            QgsProcessingParameterCrs(self.TARGET_CRS, "Target CRS (custom grid)", optional=True),
            QgsProcessingParameterNumber(self.RESOLUTION, "Resolution (custom grid, CRS units)",
                                         QgsProcessingParameterNumber.Double, None, optional=True,
                                         minValue=MIN_RESOLUTION),
            QgsProcessingParameterExtent(self.EXTENT, "Extent to export non-file layers (WMS/XYZ…)", optional=True),
        ]
        for param in advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterRasterDestination(self.CHANGE_MASK, "Change mask"))
        self.addParameter(QgsProcessingParameterRasterDestination(self.CHANGE_PROBABILITY, "Change probability"))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.CHANGE_POLYGONS, "Change polygons", QgsProcessing.TypeVectorPolygon, optional=True,
            createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber(self.CHANGED_AREA_M2, "Changed area (m²)"))
        self.addOutput(QgsProcessingOutputNumber(self.CHANGED_FRACTION, "Changed fraction of the valid area"))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.SUMMARY, "Run summary (JSON)", fileFilter="JSON files (*.json)", optional=True,
            createByDefault=False))

    # -- running -------------------------------------------------------------------

    def _input_path(self, parameters: dict[str, Any], key: str, other_key: str,
                    context: QgsProcessingContext, feedback: QgsProcessingFeedback, work_dir: str,
                    grid: str = "before", target_crs: QgsCoordinateReferenceSystem | None = None,
                    resolution: float | None = None) -> str:
        """A local file for input ``key``; a non-file layer is exported first.

        The export covers EXTENT, else the other raster's extent, on the other raster's pixel
        grid; with the custom output grid (``target_crs``, ``resolution``) it is written straight
        onto that grid instead, so it is not resampled twice.
        """
        layer = self.parameterAsRasterLayer(parameters, key, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, key))
        extent = crs = pixel = None
        custom = grid == "custom" and target_crs is not None and target_crs.isValid()
        if local_raster_path(layer) is None:
            if parameters.get(self.EXTENT):
                extent = self.parameterAsExtent(parameters, self.EXTENT, context)
                crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
            other = self.parameterAsRasterLayer(parameters, other_key, context)
            if isinstance(other, QgsRasterLayer) and local_raster_path(other) is not None:
                if extent is None:
                    extent, crs = other.extent(), other.crs()
                if crs == other.crs():
                    pixel = other.rasterUnitsPerPixelX()
            if custom:
                pixel = resolution
        try:
            prepared = prepare_input(layer, extent, crs, pixel, context.transformContext(),
                                     target_crs=target_crs if custom else None)
            if isinstance(prepared, ExportRequest):
                where = (f"on the custom grid ({prepared.crs.authid() or 'target CRS'}, {resolution:g} units/px)"
                         if custom else f"({prepared.crs.authid() or 'its CRS'}, "
                         f"{prepared.extent.width() / prepared.width:g} units/px)")
                feedback.pushInfo(f"{key}: layer '{layer.name()}' is not a local file; exporting "
                                  f"{prepared.width}x{prepared.height} px to a temporary GeoTIFF {where}")
                if grid == key.lower():
                    feedback.pushInfo(f"{key}: OUTPUT_GRID '{grid}' is the grid of this export "
                                      "(the layer has no file grid of its own)")
                return run_export(prepared, work_dir, feedback)
            return prepared
        except ChangeClipPluginError as exc:
            raise QgsProcessingException(f"{key}: {exc}") from None

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:  # noqa: D102
        grid = self.parameterAsEnumString(parameters, self.OUTPUT_GRID, context) or "before"
        target_crs = self.parameterAsCrs(parameters, self.TARGET_CRS, context)  # invalid when not set
        resolution = self.parameterAsDouble(parameters, self.RESOLUTION, context) or None  # 0.0 when not set
        try:  # refuse a bad grid choice before exporting anything
            grid_choice(grid, target_crs, resolution)
        except ChangeClipPluginError as exc:
            raise QgsProcessingException(str(exc)) from None
        work_dir = os.path.join(QgsProcessingUtils.tempFolder(), f"changeclip_{uuid.uuid4().hex[:12]}")
        os.makedirs(work_dir, exist_ok=True)
        grid_args = {"grid": grid, "target_crs": target_crs, "resolution": resolution}
        before = self._input_path(parameters, self.BEFORE, self.AFTER, context, feedback, work_dir, **grid_args)
        after = self._input_path(parameters, self.AFTER, self.BEFORE, context, feedback, work_dir, **grid_args)
        mask_path = self.parameterAsOutputLayer(parameters, self.CHANGE_MASK, context)
        summary_path = self.parameterAsFileOutput(parameters, self.SUMMARY, context) or None
        probability_path = self.parameterAsOutputLayer(parameters, self.CHANGE_PROBABILITY, context)
        polygons_path = self.parameterAsOutputLayer(parameters, self.CHANGE_POLYGONS, context) or None
        for key, path, exts in ((self.CHANGE_MASK, mask_path, (".tif", ".tiff")),
                                (self.CHANGE_PROBABILITY, probability_path, (".tif", ".tiff")),
                                (self.CHANGE_POLYGONS, polygons_path, (".gpkg",))):
            if path and not path.lower().endswith(exts):
                raise QgsProcessingException(f"{key}: the backend writes {' / '.join(exts)} files only; "
                                             f"got {path!r}. Choose a file ending in {exts[0]}")
        threshold = self.parameterAsDouble(parameters, self.THRESHOLD, context) \
            if parameters.get(self.THRESHOLD) not in (None, "") else None
        config = BackendConfig.load()
        try:
            params = build_params(
                before, after, work_dir,
                engine=self.parameterAsEnumString(parameters, self.ENGINE, context),
                weights=self.parameterAsFile(parameters, self.WEIGHTS, context) or "",
                weights_dir=config.weights_dir,
                prompt=self.parameterAsString(parameters, self.PROMPT, context) or "",
                prompt_mode=self.parameterAsEnumString(parameters, self.PROMPT_MODE, context),
                bands=self.parameterAsString(parameters, self.BANDS, context) or "1,2,3",
                tile=self.parameterAsInt(parameters, self.TILE_SIZE, context),
                overlap=self.parameterAsInt(parameters, self.OVERLAP, context),
                threshold=threshold,
                device=self.parameterAsString(parameters, self.DEVICE, context) or "auto",
                precision=self.parameterAsEnumString(parameters, self.PRECISION, context) or "auto",
                runtime=self.parameterAsEnumString(parameters, self.RUNTIME, context) or "auto",
                polygons=bool(polygons_path), grid=grid, target_crs=target_crs, resolution=resolution,
                min_area_m2=self.parameterAsDouble(parameters, self.MIN_AREA, context),
                mask_path=mask_path, probability_path=probability_path, polygons_path=polygons_path,
                overwrite=True)
        except ChangeClipPluginError as exc:
            raise QgsProcessingException(str(exc)) from None

        def on_progress(progress: protocol.JobProgress) -> None:
            feedback.setProgress(progress_percent(progress))
            feedback.setProgressText(progress_text(progress))

        grid_text = params.grid if params.grid != "custom" else \
            f"custom ({_short_crs(params.target_crs)}, {params.resolution:g} units/px)"
        feedback.pushInfo(f"ChangeCLIP: engine {params.engine}, device {params.device}, "
                          f"prompt mode {params.prompt_mode}, output grid {grid_text}; backend {config.describe()}")
        try:
            summary = run_detection(params, on_progress, feedback.isCanceled, config=config)
        except JobCancelledError:
            raise QgsProcessingException("ChangeCLIP run cancelled; partial outputs were removed") from None
        except ChangeClipPluginError as exc:
            raise QgsProcessingException(f"ChangeCLIP: {exc}") from None
        finally:
            if QgsApplication.platform() == "qgis_process":
                # qgis_process exits without running Python's atexit hooks: stop the backend we started.
                LAUNCHER.stop()
        for warning in summary.get("warnings") or []:
            feedback.pushWarning(f"ChangeCLIP: {warning}")
        feedback.pushInfo(f"{result_line(summary)}; device {summary.get('device', '?')}{runtime_line(summary)}")
        area = summary.get("changed_area_m2")  # None where the rasters have no CRS: unknown, not 0
        area = float(area) if area is not None else None
        fraction = float(summary.get("changed_fraction") or 0.0)
        for path, kind in ((mask_path, "mask"), (probability_path, "probability"), (polygons_path, "polygons")):
            if path:
                write_sidecar_style(path, kind)  # the files open styled wherever they are opened later
            if path and context.willLoadLayerOnCompletion(path):
                context.layerToLoadOnCompletionDetails(path).setPostProcessor(_StyleOutput.create(kind))
        return {self.CHANGE_MASK: mask_path, self.CHANGE_PROBABILITY: probability_path,
                self.CHANGE_POLYGONS: polygons_path, self.CHANGED_AREA_M2: area,
                self.CHANGED_FRACTION: fraction,
                self.SUMMARY: _copy_summary(os.path.join(work_dir, protocol.SUMMARY_NAME), summary_path)}


def _short_crs(text: str | None) -> str:
    """A CRS string for the log: an authid as it is, a WKT by its name."""
    crs = text or ""
    if len(crs) <= 40:
        return crs
    name = crs.split('"')[1] if crs.count('"') >= 2 else ""
    return f"WKT CRS '{name}'" if name else "WKT CRS"


def _copy_summary(source: str, target: str | None) -> str | None:
    """Copy the backend's summary.json to the SUMMARY destination (temporary name, then rename)."""
    if not target:
        return None
    with open(source, encoding="utf-8") as fh:
        summary = json.load(fh)
    summary.setdefault("outputs", {})["summary"] = target  # where this copy lives, not the temp folder
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    part = f"{target}.part"
    with open(part, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    os.replace(part, target)
    return target
