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
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterCrs,
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

from ..compat import (
    NUMBER_DOUBLE,
    NUMBER_INTEGER,
    PARAMETER_ADVANCED,
    SOURCE_VECTOR_POLYGON,
)
from ..core import output_safety, protocol
from ..core.backend_launcher import LAUNCHER
from ..core.describe import matching_line, resolve_describe_weights
from ..core.errors import ChangeClipPluginError, JobCancelledError
from ..core.layers import (
    ExportRequest,
    local_raster_path,
    no_sidecars_beside_inputs,
    place_output,
    prepare_input,
    restore_input_sidecars,
    run_export,
    same_raster_problem,
    suspend_input_sidecars,
    write_sidecar_style,
)
from ..core.params import build_params, grid_choice, run_name
from ..core.runner import progress_percent, progress_text, result_line, run_detection, runtime_line
from ..core.settings import BackendConfig
from .backend_algorithm import BackendAlgorithm

MIN_RESOLUTION = 1e-9
"""Smallest RESOLUTION Processing accepts (it must be > 0; 1e-9 is below any real pixel size)."""

_QGIS_PROCESS_SIDECARS: list[str | None] = []
"""Under qgis_process: the GDAL_PAM_ENABLED setting to restore once the run ends (see createInstance)."""

_POST_PROCESSORS: list[QgsProcessingLayerPostProcessorInterface] = []
"""Keeps the layer post-processors alive until QGIS has called them (QGIS does not own them)."""


class _PlaceOutput(QgsProcessingLayerPostProcessorInterface):
    """Styles, names and groups an output layer that Processing loads, by the dock's rule
    (:func:`core.layers.place_output`): one group per run, probability present but hidden."""

    def __init__(self, kind: str, run_name: str, run_key: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.run_name = run_name
        self.run_key = run_key
        self.summary = summary

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: ANN001, N802, D102
        place_output(layer, self.kind, self.run_name, self.run_key, context.project(), self.summary)

    @classmethod
    def create(cls, kind: str, run_name: str, run_key: str, summary: dict[str, Any] | None = None) -> _PlaceOutput:
        processor = cls(kind, run_name, run_key, summary)
        _POST_PROCESSORS.append(processor)
        del _POST_PROCESSORS[:-1000]  # bounded; a batch loads its rows at the end
        return processor


class DetectChangesAlgorithm(BackendAlgorithm):
    """Detect changes between a before and an after raster with ChangeCLIP or IR-MAD."""

    group_name = "Change detection"
    group_id = "changedetection"

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
    MIN_PIXELS = "MIN_PIXELS"
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
    DESCRIBE = "DESCRIBE"
    QUERY = "QUERY"
    QUERY_THRESHOLD = "QUERY_THRESHOLD"
    KEEP_MATCHING = "KEEP_MATCHING"
    VOCABULARY = "VOCABULARY"
    DESCRIBE_WEIGHTS = "DESCRIBE_WEIGHTS"
    MATCHING_POLYGONS = "MATCHING_POLYGONS"
    MATCHING_COUNT = "MATCHING_COUNT"
    MATCHING_AREA_M2 = "MATCHING_AREA_M2"

    # -- identity ------------------------------------------------------------------

    def name(self) -> str:  # noqa: D102
        return "detectchanges"

    def displayName(self) -> str:  # noqa: D102
        return "Detect changes (ChangeCLIP)"

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
            "CHANGE_POLYGONS (GeoPackage; polygons of fewer than MIN_PIXELS output pixels, default "
            f"{protocol.DEFAULT_MIN_POLYGON_PIXELS}, or smaller than MIN_AREA m² are dropped), and the numbers "
            "CHANGED_AREA_M2 (empty when the rasters have no CRS) and CHANGED_FRACTION (of the valid area) for "
            "models; SUMMARY optionally saves the run's summary.json. Warnings of the run (no CRS, resampled "
            "inputs, …) appear in the log.\n\n"
            "DESCRIBE (needs CHANGE_POLYGONS): CLIP says what each change polygon was and became (before_class, "
            "after_class, change_label). QUERY: words ('building') or a transition ('farmland to building'); "
            "each polygon gets query_score (0-1) and matches_query (score >= QUERY_THRESHOLD); MATCHING_COUNT "
            "and MATCHING_AREA_M2 count the matches; KEEP_MATCHING also writes MATCHING_POLYGONS (only the "
            "matching changes). Advanced: VOCABULARY (a text file of class names, one per line; a line @default "
            "keeps the 56 defaults), DESCRIBE_WEIGHTS (CLIP weights; default the tagger file of the weights folder, "
            "else OpenAI CLIP ViT-B/16 downloaded when online).\n\n"
            "The computation runs in the ChangeCLIP backend process (started automatically; see the plugin's "
            "'Set up backend…' and Diagnostics).")

    def checkParameterValues(self, parameters: dict[str, Any],  # noqa: N802 - QGIS API
                             context: QgsProcessingContext) -> tuple[bool, str]:
        """QGIS's checks, then: Before and After must be two rasters (the dock refuses it too). The
        input layers loaded for these checks write no sidecar files beside the inputs."""
        with no_sidecars_beside_inputs():
            ok, message = super().checkParameterValues(parameters, context)
            if not ok:
                return ok, message
            problem = same_raster_problem(self.parameterAsRasterLayer(parameters, self.BEFORE, context),
                                          self.parameterAsRasterLayer(parameters, self.AFTER, context))
        return (False, problem) if problem else (True, message)

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
                                         NUMBER_INTEGER, 256, minValue=64, maxValue=4096),
            QgsProcessingParameterNumber(self.OVERLAP, "Tile overlap (px)", NUMBER_INTEGER,
                                         64, minValue=0, maxValue=2047),
            QgsProcessingParameterNumber(self.THRESHOLD, "Change threshold (0-1, empty = engine default)",
                                         NUMBER_DOUBLE, None, optional=True,
                                         minValue=0.0, maxValue=1.0),
            QgsProcessingParameterString(self.DEVICE, f"Device ({protocol.DEVICES_HELP})", defaultValue="auto"),
            QgsProcessingParameterEnum(self.PRECISION, "Precision (auto: fp32 on CPU, bf16/fp16 on GPU)",
                                       options=list(protocol.PRECISIONS), defaultValue="auto",
                                       usesStaticStrings=True),
            QgsProcessingParameterEnum(self.RUNTIME, "Runtime (auto: torch on GPU, fastest CPU runtime on CPU)",
                                       options=list(protocol.RUNTIMES), defaultValue="auto",
                                       usesStaticStrings=True),
            QgsProcessingParameterNumber(self.MIN_AREA, "Minimum polygon area (m²)",
                                         NUMBER_DOUBLE, 0.0, minValue=0.0),
            QgsProcessingParameterNumber(self.MIN_PIXELS, "Minimum polygon size (output pixels)",
                                         NUMBER_INTEGER, protocol.DEFAULT_MIN_POLYGON_PIXELS, minValue=0),
            QgsProcessingParameterEnum(self.OUTPUT_GRID, "Output grid", options=list(protocol.GRIDS),
                                       defaultValue="before", usesStaticStrings=True),
            QgsProcessingParameterCrs(self.TARGET_CRS, "Target CRS (custom grid)", optional=True),
            QgsProcessingParameterNumber(self.RESOLUTION, "Resolution (custom grid, CRS units)",
                                         NUMBER_DOUBLE, None, optional=True,
                                         minValue=MIN_RESOLUTION),
            QgsProcessingParameterExtent(self.EXTENT, "Extent to export non-file layers (WMS/XYZ…)", optional=True),
        ]
        for param in advanced:
            param.setFlags(param.flags() | PARAMETER_ADVANCED)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterRasterDestination(self.CHANGE_MASK, "Change mask"))
        self.addParameter(QgsProcessingParameterRasterDestination(self.CHANGE_PROBABILITY, "Change probability"))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.CHANGE_POLYGONS, "Change polygons", SOURCE_VECTOR_POLYGON, optional=True,
            createByDefault=True))  # the dialog makes polygons unless skipped, as the dock does
        self._add_describe_parameters()
        self.addOutput(QgsProcessingOutputNumber(self.CHANGED_AREA_M2, "Changed area (m²)"))
        self.addOutput(QgsProcessingOutputNumber(self.CHANGED_FRACTION, "Changed fraction of the valid area"))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.SUMMARY, "Run summary (JSON)", fileFilter="JSON files (*.json)", optional=True,
            createByDefault=False))

    def _add_describe_parameters(self) -> None:
        """DESCRIBE, QUERY, QUERY_THRESHOLD, KEEP_MATCHING (advanced: VOCABULARY, DESCRIBE_WEIGHTS) and outputs."""
        self.addParameter(QgsProcessingParameterBoolean(
            self.DESCRIBE, "Describe changes in words (CLIP; needs change polygons)", defaultValue=False))
        self.addParameter(QgsProcessingParameterString(
            self.QUERY, "Find changes (e.g. 'building' or 'farmland to building'; needs Describe)",
            defaultValue="", optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.KEEP_MATCHING, "Also write the matching changes only (needs Find)", defaultValue=False))
        advanced = [
            QgsProcessingParameterNumber(self.QUERY_THRESHOLD, "Query threshold (query_score at which a change "
                                         "matches)", NUMBER_DOUBLE,
                                         protocol.DEFAULT_QUERY_THRESHOLD, minValue=0.001, maxValue=0.999),
            QgsProcessingParameterFile(self.VOCABULARY, "Vocabulary file (class names, one per line)",
                                       optional=True, fileFilter="Text files (*.txt);;All files (*.*)"),
            QgsProcessingParameterFile(self.DESCRIBE_WEIGHTS, "CLIP weights for describing", optional=True,
                                       fileFilter="Weights (*.pt *.bin *.safetensors *.pth);;All files (*.*)"),
        ]
        for param in advanced:
            param.setFlags(param.flags() | PARAMETER_ADVANCED)
            self.addParameter(param)
        self.addOutput(QgsProcessingOutputVectorLayer(self.MATCHING_POLYGONS, "Matching changes",
                                                      SOURCE_VECTOR_POLYGON))
        self.addOutput(QgsProcessingOutputNumber(self.MATCHING_COUNT, "Number of matching changes"))
        self.addOutput(QgsProcessingOutputNumber(self.MATCHING_AREA_M2, "Area of the matching changes (m²)"))

    def _describe_options(self, parameters: dict[str, Any], context: QgsProcessingContext,
                          weights_dir: str, polygons: bool) -> dict[str, Any]:
        """The describe keyword arguments of :func:`build_params`; refuses DESCRIBE without polygons."""
        describe = self.parameterAsBoolean(parameters, self.DESCRIBE, context)
        query = (self.parameterAsString(parameters, self.QUERY, context) or "").strip()
        if describe and not polygons:
            raise QgsProcessingException(f"{self.DESCRIBE} describes the change polygons: set the "
                                         f"{self.CHANGE_POLYGONS} output (a .gpkg file or a temporary layer)")
        if query and not describe:
            raise QgsProcessingException(f"{self.QUERY} is scored on the polygons' descriptions: turn "
                                         f"{self.DESCRIBE} on, or leave {self.QUERY} empty")
        return {"describe": describe, "query": query,
                "query_threshold": self.parameterAsDouble(parameters, self.QUERY_THRESHOLD, context),
                "keep_matching": self.parameterAsBoolean(parameters, self.KEEP_MATCHING, context),
                "vocabulary": self.parameterAsFile(parameters, self.VOCABULARY, context) or "",
                "describe_weights": resolve_describe_weights(
                    self.parameterAsFile(parameters, self.DESCRIBE_WEIGHTS, context) or "", weights_dir)
                if describe else None}

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
        with no_sidecars_beside_inputs():  # opening the file must not write <input>.aux.xml
            layer = self.parameterAsRasterLayer(parameters, key, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, key))
        extent = crs = pixel = None
        custom = grid == "custom" and target_crs is not None and target_crs.isValid()
        if local_raster_path(layer) is None:
            if parameters.get(self.EXTENT):
                extent = self.parameterAsExtent(parameters, self.EXTENT, context)
                crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
            with no_sidecars_beside_inputs():
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

    def _run_name(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        """The run's name for its layer group, as the dock names it: ``"<before> → <after> [prompt]"``."""
        names = []
        for key in (self.BEFORE, self.AFTER):
            layer = self.parameterAsRasterLayer(parameters, key, context)
            names.append(layer.name() if layer is not None else key.lower())
        return run_name(names[0], names[1], self.parameterAsString(parameters, self.PROMPT, context) or "",
                        self.parameterAsEnumString(parameters, self.ENGINE, context))

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
                min_pixels=self.parameterAsInt(parameters, self.MIN_PIXELS, context),
                mask_path=mask_path, probability_path=probability_path, polygons_path=polygons_path,
                overwrite=True, **self._describe_options(parameters, context, config.weights_dir, bool(polygons_path)))
            if summary_path:  # the copy this algorithm writes obeys the same rule as the backend's outputs
                output_safety.check_outputs([*output_safety.outputs_of(params),
                                             output_safety.Output(self.SUMMARY, "json", summary_path)],
                                            output_safety.inputs_of(params), overwrite=True)
        except ChangeClipPluginError as exc:
            raise QgsProcessingException(str(exc)) from None
        except output_safety.OutputPathError as exc:
            raise QgsProcessingException(f"{exc.field}: {exc.path}: {exc.message}") from None

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
                while _QGIS_PROCESS_SIDECARS:
                    restore_input_sidecars(_QGIS_PROCESS_SIDECARS.pop())
        for warning in summary.get("warnings") or []:
            feedback.pushWarning(f"ChangeCLIP: {warning}")
        feedback.pushInfo(f"{result_line(summary)}; device {summary.get('device', '?')}{runtime_line(summary)}")
        area = summary.get("changed_area_m2")  # None where the rasters have no CRS: unknown, not 0
        area = float(area) if area is not None else None
        fraction = float(summary.get("changed_fraction") or 0.0)
        name, key = self._run_name(parameters, context), uuid.uuid4().hex
        for path, kind in ((mask_path, "mask"), (probability_path, "probability"), (polygons_path, "polygons")):
            if path:
                write_sidecar_style(path, kind)  # the files open styled wherever they are opened later
            if path and context.willLoadLayerOnCompletion(path):
                context.layerToLoadOnCompletionDetails(path).setPostProcessor(
                    _PlaceOutput.create(kind, name, key, summary))
        matching = self._matching_outputs(summary, context, feedback, name, key)
        return {self.CHANGE_MASK: mask_path, self.CHANGE_PROBABILITY: probability_path,
                self.CHANGE_POLYGONS: polygons_path, self.CHANGED_AREA_M2: area,
                self.CHANGED_FRACTION: fraction,
                self.SUMMARY: _copy_summary(os.path.join(work_dir, protocol.SUMMARY_NAME), summary_path),
                **matching}

    def _matching_outputs(self, summary: dict[str, Any], context: QgsProcessingContext,
                          feedback: QgsProcessingFeedback, name: str, key: str) -> dict[str, Any]:
        """MATCHING_COUNT, MATCHING_AREA_M2 and MATCHING_POLYGONS (loaded, styled) of a run with a query."""
        line = matching_line(summary)
        if line is None:
            return {self.MATCHING_POLYGONS: None, self.MATCHING_COUNT: None, self.MATCHING_AREA_M2: None}
        feedback.pushInfo(f"ChangeCLIP: {line}")
        query = summary["describe"]["query"]
        path = (summary.get("outputs") or {}).get("polygons_matching")
        if path:
            write_sidecar_style(path, "polygons")
            context.addLayerToLoadOnCompletion(path, QgsProcessingContext.LayerDetails(
                f"matching changes ({query.get('text', '')})", context.project(), self.MATCHING_POLYGONS))
            context.layerToLoadOnCompletionDetails(path).setPostProcessor(
                _PlaceOutput.create("polygons_matching", name, key, summary))
        area = query.get("matching_area_m2")
        return {self.MATCHING_POLYGONS: path, self.MATCHING_COUNT: int(query.get("matching", 0)),
                self.MATCHING_AREA_M2: float(area) if area is not None else None}


def protect_inputs_under_qgis_process() -> bool:
    """Under ``qgis_process run changeclip:detectchanges``: no ``.aux.xml`` beside the inputs.

    qgis_process opens the BEFORE and AFTER files itself while it reads its arguments, before
    any method of this algorithm runs, and QGIS's statistics of those layers would be written by
    GDAL to ``<input>.aux.xml`` at exit. The provider calls this when it loads, which qgis_process
    does before reading its arguments: when the command runs this algorithm (and only then),
    GDAL's PAM sidecars are turned off for the main thread until :meth:`processAlgorithm` ends.

    Returns:
        True when they were turned off.
    """
    if QgsApplication.platform() != "qgis_process" or _QGIS_PROCESS_SIDECARS:
        return False
    args = [str(a) for a in QgsApplication.arguments()]
    if "run" not in args or args[args.index("run") + 1:args.index("run") + 2] != ["changeclip:detectchanges"]:
        return False
    _QGIS_PROCESS_SIDECARS.append(suspend_input_sidecars())
    return True


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
