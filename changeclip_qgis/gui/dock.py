"""The ChangeCLIP dock: pick two rasters and a prompt, run, watch progress, get styled layers.

The dock only turns widgets into a job (:func:`core.params.build_params`) and hands it to a
:class:`DetectTask`; it never waits on the backend itself.
"""

from __future__ import annotations

import os
from typing import Any

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsProject,
    QgsRasterLayer,
    QgsUnitTypes,
)
from qgis.gui import (
    QgsCollapsibleGroupBox,
    QgsDockWidget,
    QgsFileWidget,
    QgsMapLayerComboBox,
    QgsProjectionSelectionWidget,
)
from qgis.PyQt.QtCore import Qt, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..compat import RASTER_LAYER_FILTER
from ..core import protocol
from ..core.describe import QUERY_HELP, matching_line, prompt_help, resolve_describe_weights
from ..core.errors import ChangeClipPluginError
from ..core.layers import KIND_PROPERTY, ExportRequest, local_raster_path, prepare_input, same_raster_problem
from ..core.log import log
from ..core.pairing import choose_pair, layer_date
from ..core.params import (
    build_params,
    crs_text,
    default_output_base,
    default_output_dir,
    engine_name,
    grid_choice,
    resolve_weights,
    run_name,
)
from ..core.runner import device_line, result_line, runtime_line
from ..core.settings import KEY_DOCK_CHOICES, KEY_OUTPUT_BASE, BackendConfig, get, set_value
from ..core.weights_info import summarize_weights, unreadable_reason
from ..tasks.detect_task import BackendCheckTask, DetectTask

PROMPT_MODE_LABELS = (("auto", "Auto tags (+ my words)"), ("none", "None"), ("words", "My words only"))
GRID_LABELS = (("before", "Before raster's grid"), ("after", "After raster's grid"),
               ("custom", "Custom: Target CRS + Resolution"))


class ChangeClipDock(QgsDockWidget):
    """The dock widget.

    Args:
        iface: the QGIS interface (may be None in tests; then no message bar and no canvas).
        parent: parent widget.

    Signals:
        runFinished(dict): the summary of a successful run.
        runFailed(str): the message of a failed or cancelled run.
    """

    runFinished = pyqtSignal(dict)
    runFailed = pyqtSignal(str)

    def __init__(self, iface: Any = None, parent: QWidget | None = None) -> None:
        super().__init__("ChangeCLIP change detection", parent)
        self.setObjectName("ChangeClipDock")
        self.iface = iface
        self.task: DetectTask | None = None
        self.check_task: BackendCheckTask | None = None
        self.last_summary: dict[str, Any] | None = None
        self.user_chose_layers = False
        self._build()
        self._restore_choices()
        self._update_engine()
        self._update_describe()
        self._update_grid()
        self._follow_project()

    # -- construction --------------------------------------------------------------

    def _build(self) -> None:
        body = QWidget(self)
        outer = QVBoxLayout(body)
        form = QFormLayout()
        self.before_combo = QgsMapLayerComboBox(body)
        self.before_combo.setFilters(RASTER_LAYER_FILTER)
        self.after_combo = QgsMapLayerComboBox(body)
        self.after_combo.setFilters(RASTER_LAYER_FILTER)
        form.addRow("Before", self.before_combo)
        form.addRow("After", self.after_combo)
        self.prompt_edit = QLineEdit(body)
        self.prompt_edit.setPlaceholderText("what to look for, e.g. building, road")
        self.prompt_mode_combo = QComboBox(body)
        for value, label in PROMPT_MODE_LABELS:
            self.prompt_mode_combo.addItem(label, value)
        prompt_row = QHBoxLayout()
        prompt_row.addWidget(self.prompt_edit, 1)
        prompt_row.addWidget(self.prompt_mode_combo)
        form.addRow("Prompt", prompt_row)
        self.prompt_mode_combo.currentIndexChanged.connect(self._update_prompt_help)
        self.describe_check = QCheckBox("Describe changes in words (CLIP)", body)
        self.describe_check.setToolTip("CLIP names what each change polygon was and became (e.g. farmland → "
                                       "building); needs change polygons")
        self.describe_check.toggled.connect(self._update_describe)
        form.addRow("Describe", self.describe_check)
        self.query_edit = QLineEdit(body)
        self.query_edit.setPlaceholderText("e.g. building, or farmland to building")
        self.query_edit.setToolTip(QUERY_HELP)
        self.keep_matching_check = QCheckBox("only matching", body)
        self.keep_matching_check.setToolTip("also write a layer and a mask of only the changes that match")
        query_row = QHBoxLayout()
        query_row.addWidget(self.query_edit, 1)
        query_row.addWidget(self.keep_matching_check)
        form.addRow("Find", query_row)
        self.engine_combo = QComboBox(body)
        self.engine_combo.addItem(f"{engine_name('changeclip')} (deep learning)", "changeclip")
        self.engine_combo.addItem(f"{engine_name('irmad')} (unsupervised, no weights)", "irmad")
        self.engine_combo.currentIndexChanged.connect(self._update_engine)
        form.addRow("Engine", self.engine_combo)
        self.weights_widget = QgsFileWidget(body)
        self.weights_widget.setFilter("Weights (*.safetensors *.pth *.pt)")
        self.weights_widget.setDialogTitle("ChangeCLIP weights file")
        weights_dir = BackendConfig.load().weights_dir
        if weights_dir:
            self.weights_widget.setDefaultRoot(weights_dir)
        self.weights_widget.lineEdit().setPlaceholderText("default: the one file in the weights folder")
        form.addRow("Weights", self.weights_widget)
        self.weights_info = QLabel(body)
        self.weights_info.setWordWrap(True)
        self.weights_info.setToolTip("What the weights file says about itself: network, and the imagery it was "
                                     "trained on (runs warn when a scene's pixels are 2x or more from it)")
        form.addRow("", self.weights_info)
        self.weights_widget.fileChanged.connect(self.refresh_weights_info)
        self.device_combo = QComboBox(body)
        self.device_combo.setEditable(True)
        self.device_combo.addItems(["auto", "cpu", "cuda", "cuda:0", "cuda:1"])
        form.addRow("Device", self.device_combo)
        self.precision_combo = QComboBox(body)
        self.precision_combo.addItems(list(protocol.PRECISIONS))
        self.precision_combo.setToolTip(
            "auto: fp32 on the CPU, bf16 (or fp16) autocast on a GPU.\n"
            "bf16 on a CPU with AMX or AVX-512 BF16 (recent Xeons, Zen 4) is 2-3x faster than fp32,\n"
            "with probabilities that differ slightly from fp32; fp16 is for GPUs only.")
        form.addRow("Precision", self.precision_combo)
        outer.addLayout(form)

        self.advanced_box = QgsCollapsibleGroupBox("Advanced", body)
        self.advanced_box.setCollapsed(True)
        adv = QFormLayout(self.advanced_box)
        self.bands_edit = QLineEdit("1,2,3", self.advanced_box)
        self.bands_edit.setToolTip("1-based band numbers of red, green, blue in both rasters")
        adv.addRow("Bands (R,G,B)", self.bands_edit)
        self.runtime_combo = QComboBox(self.advanced_box)
        self.runtime_combo.addItems(list(protocol.RUNTIMES))
        self.runtime_combo.setToolTip(
            "What runs the network. auto: PyTorch on a GPU; on the CPU the fastest measured runtime\n"
            "(OpenVINO, else ONNX Runtime; exported once per weights file, cached). torch, onnxruntime\n"
            "or openvino force one; a CPU runtime that is missing falls back to PyTorch with a warning.\n"
            "Precision int8 (CPU runtimes only) is calibrated on sample tiles of the two rasters.")
        adv.addRow("Runtime", self.runtime_combo)
        self.tile_spin = QSpinBox(self.advanced_box)
        self.tile_spin.setRange(64, 4096)
        self.tile_spin.setSingleStep(32)
        self.tile_spin.setValue(256)
        self.tile_spin.setSuffix(" px")
        adv.addRow("Tile size", self.tile_spin)
        self.overlap_spin = QSpinBox(self.advanced_box)
        self.overlap_spin.setRange(0, 2047)
        self.overlap_spin.setValue(64)
        self.overlap_spin.setSuffix(" px")
        adv.addRow("Overlap", self.overlap_spin)
        self.threshold_spin = QDoubleSpinBox(self.advanced_box)
        self.threshold_spin.setRange(0.0, 0.99)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setSpecialValueText("engine default")
        adv.addRow("Threshold", self.threshold_spin)
        self.polygons_check = QCheckBox("Also make change polygons", self.advanced_box)
        self.polygons_check.setChecked(True)
        adv.addRow("Polygons", self.polygons_check)
        self.min_pixels_spin = QSpinBox(self.advanced_box)
        self.min_pixels_spin.setRange(0, 1_000_000)
        self.min_pixels_spin.setValue(protocol.DEFAULT_MIN_POLYGON_PIXELS)
        self.min_pixels_spin.setSuffix(" px")
        self.min_pixels_spin.setToolTip(
            "Change polygons of fewer output pixels are dropped (default "
            f"{protocol.DEFAULT_MIN_POLYGON_PIXELS} px, a 2x2 block: single-pixel specks are noise).\n"
            "In m² that is this many times the output pixel's area, e.g. 4 px = 100 m² at 5 m pixels.\n"
            "0 keeps every polygon.")
        adv.addRow("Minimum size", self.min_pixels_spin)
        self.min_area_spin = QDoubleSpinBox(self.advanced_box)
        self.min_area_spin.setRange(0.0, 1e9)
        self.min_area_spin.setDecimals(1)
        self.min_area_spin.setSuffix(" m²")
        self.min_area_spin.setToolTip("Change polygons smaller than this are dropped too (0 = no area limit)")
        adv.addRow("Minimum area", self.min_area_spin)
        self.grid_combo = QComboBox(self.advanced_box)
        for value, label in GRID_LABELS:
            self.grid_combo.addItem(label, value)
        self.grid_combo.setToolTip(
            "The grid every output is on; the other raster is warped onto it.\n"
            "Custom: a north-up grid in the Target CRS with Resolution CRS units per pixel\n"
            "(metres for UTM), over the area both rasters cover.")
        self.grid_combo.currentIndexChanged.connect(self._update_grid)
        adv.addRow("Output grid", self.grid_combo)
        self.target_crs_widget = QgsProjectionSelectionWidget(self.advanced_box)
        crs_options = getattr(QgsProjectionSelectionWidget, "CrsOption", QgsProjectionSelectionWidget)  # scoped in Qt6
        self.target_crs_widget.setOptionVisible(crs_options.CrsNotSet, True)
        self.target_crs_widget.setNotSetText("not set")
        self.target_crs_widget.setCrs(QgsCoordinateReferenceSystem())
        self.target_crs_widget.setToolTip("CRS of the outputs for Output grid 'custom', e.g. EPSG:32633 (UTM 33N)")
        self.target_crs_widget.crsChanged.connect(self._update_resolution_unit)
        adv.addRow("Target CRS", self.target_crs_widget)
        self.resolution_spin = QDoubleSpinBox(self.advanced_box)
        self.resolution_spin.setRange(0.0, 1e7)
        self.resolution_spin.setDecimals(6)
        self.resolution_spin.setSpecialValueText("not set")
        self.resolution_spin.setToolTip("pixel size of the outputs for Output grid 'custom', in the Target CRS's "
                                        "units (metres for UTM, degrees for EPSG:4326)")
        adv.addRow("Resolution", self.resolution_spin)
        self.output_widget = QgsFileWidget(self.advanced_box)
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.output_widget.setFilePath(get(KEY_OUTPUT_BASE))
        self.output_widget.lineEdit().setPlaceholderText(self.default_output_base())
        self.output_widget.setToolTip("each run gets its own subfolder here")
        adv.addRow("Output folder", self.output_widget)
        outer.addWidget(self.advanced_box)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run", body)
        self.run_button.clicked.connect(self.start_run)
        self.cancel_button = QPushButton("Cancel", body)
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_run)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        outer.addLayout(buttons)
        self.progress_bar = QProgressBar(body)
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setValue(0)
        outer.addWidget(self.progress_bar)
        self.stage_label = QLabel("Ready", body)
        self.stage_label.setWordWrap(True)
        outer.addWidget(self.stage_label)
        self.summary_label = QLabel("", body)
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.summary_label)

        backend_row = QHBoxLayout()
        self.backend_label = QLabel(f"Backend: {BackendConfig.load().describe()} (not connected)", body)
        self.backend_label.setWordWrap(True)
        backend_row.addWidget(self.backend_label, 1)
        self.check_button = QPushButton("Connect", body)
        self.check_button.setToolTip("start or reach the backend and show where it computes")
        self.check_button.clicked.connect(self.check_backend)
        backend_row.addWidget(self.check_button)
        self.diagnostics_button = QPushButton("Diagnostics", body)
        self.diagnostics_button.clicked.connect(self.show_diagnostics)
        backend_row.addWidget(self.diagnostics_button)
        outer.addLayout(backend_row)
        outer.addStretch(1)
        from .train_page import TrainPage

        self.tabs = QTabWidget(self)
        self.tabs.addTab(body, "Detect")
        self.train_page = TrainPage(self.iface, lambda: self.weights_widget.filePath(), self.tabs)
        self.train_page.useWeights.connect(self.use_weights)
        self.tabs.addTab(self.train_page, "Train")
        self.setWidget(self.tabs)

    def use_weights(self, path: str) -> None:
        """Make ``path`` the Detect page's weights (the Train page's one-click hand-over) and show it."""
        index = self.engine_combo.findData("changeclip")
        if index >= 0:
            self.engine_combo.setCurrentIndex(index)
        self.weights_widget.setFilePath(path)
        self.tabs.setCurrentIndex(0)
        self._message(f"Detection now uses the trained weights {path}", "success")

    # -- Before / After defaults -----------------------------------------------------

    def _follow_project(self) -> None:
        """Propose a Before/After pair now and whenever the project's rasters change.

        The dock is usually built before QGIS loads the project's layers, so the pair is proposed
        again when layers are added or removed and when a project is read or cleared (deferred to
        the event loop, once per burst of signals). A choice the user made in either list is kept
        until another project is loaded.
        """
        self._pair_timer = QTimer(self)
        self._pair_timer.setSingleShot(True)
        self._pair_timer.setInterval(0)
        self._pair_timer.timeout.connect(self.propose_pair)
        project = QgsProject.instance()
        self._project_signals = [(project.layersAdded, self._pair_timer.start),
                                 (project.layersRemoved, self._pair_timer.start),
                                 (project.readProject, self._new_project),
                                 (project.cleared, self._new_project)]
        for signal, slot in self._project_signals:
            signal.connect(slot)
        self.before_combo.activated.connect(self._user_picked)
        self.after_combo.activated.connect(self._user_picked)
        self.propose_pair()

    def _user_picked(self, *_args: object) -> None:
        self.user_chose_layers = True

    def _new_project(self, *_args: object) -> None:
        self.user_chose_layers = False
        self._pair_timer.start()

    def propose_pair(self) -> None:
        """Set Before and After to two different rasters, the older date first (see :mod:`core.pairing`).

        Does nothing once the user picked a layer in either list, or with fewer than two rasters;
        outputs of earlier runs are never proposed.
        """
        if self.user_chose_layers:
            return
        layers = [self.before_combo.layer(i) for i in range(self.before_combo.count())]
        layers = [lyr for lyr in layers if lyr is not None and not lyr.customProperty(KIND_PROPERTY)]
        pair = choose_pair([layer_date(lyr, local_raster_path(lyr)) for lyr in layers])
        if pair is not None:
            self.before_combo.setLayer(layers[pair[0]])
            self.after_combo.setLayer(layers[pair[1]])

    # -- last-used choices ---------------------------------------------------------

    def _choices(self) -> dict[str, str]:
        """The dock's current choices as settings strings (layers and output folder excluded)."""
        return {
            "engine": str(self.engine_combo.currentData()), "prompt_mode": str(self.prompt_mode_combo.currentData()),
            "prompt": self.prompt_edit.text(), "weights": self.weights_widget.filePath(),
            "device": self.device_combo.currentText(), "precision": self.precision_combo.currentText(),
            "runtime": self.runtime_combo.currentText(), "bands": self.bands_edit.text(), "tile": str(self.tile_spin.value()),
            "overlap": str(self.overlap_spin.value()), "threshold": str(self.threshold_spin.value()),
            "polygons": "1" if self.polygons_check.isChecked() else "0", "min_area": str(self.min_area_spin.value()),
            "min_pixels": str(self.min_pixels_spin.value()),
            "grid": str(self.grid_combo.currentData()), "target_crs": crs_text(self.target_crs_widget.crs()) or "",
            "resolution": str(self.resolution_spin.value()),
            "describe": "1" if self.describe_check.isChecked() else "0", "query": self.query_edit.text(),
        }

    def _save_choices(self) -> None:
        """Remember the choices of a run that was started, for the next QGIS session."""
        for key, value in self._choices().items():
            set_value(KEY_DOCK_CHOICES + key, value)

    def _restore_choices(self) -> None:
        """Put back the choices of the last run started; unusable stored values are ignored."""
        stored = {key: get(KEY_DOCK_CHOICES + key) for key in self._choices()}

        def pick(combo: QComboBox, value: str) -> None:
            index = combo.findData(value)
            if index >= 0:
                combo.setCurrentIndex(index)

        def number(spin: Any, value: str, kind: type) -> None:
            try:
                parsed = kind(float(value)) if kind is int else kind(value)
            except ValueError:
                return
            if spin.minimum() <= parsed <= spin.maximum():
                spin.setValue(parsed)

        if stored["engine"]:
            pick(self.engine_combo, stored["engine"])
        if stored["prompt_mode"]:
            pick(self.prompt_mode_combo, stored["prompt_mode"])
        self.prompt_edit.setText(stored["prompt"])
        if stored["weights"] and os.path.isfile(stored["weights"]):
            self.weights_widget.setFilePath(stored["weights"])
        if stored["device"]:
            self.device_combo.setCurrentText(stored["device"])
        if stored["precision"] in protocol.PRECISIONS:
            self.precision_combo.setCurrentText(stored["precision"])
        if stored["runtime"] in protocol.RUNTIMES:
            self.runtime_combo.setCurrentText(stored["runtime"])
        if stored["bands"]:
            self.bands_edit.setText(stored["bands"])
        number(self.tile_spin, stored["tile"], int)
        number(self.overlap_spin, stored["overlap"], int)
        number(self.threshold_spin, stored["threshold"], float)
        number(self.min_area_spin, stored["min_area"], float)
        number(self.min_pixels_spin, stored["min_pixels"], int)
        if stored["polygons"] in ("0", "1"):
            self.polygons_check.setChecked(stored["polygons"] == "1")
        if stored["grid"]:
            pick(self.grid_combo, stored["grid"])
        if stored["target_crs"]:
            crs = QgsCoordinateReferenceSystem()
            if crs.createFromUserInput(stored["target_crs"]) and crs.isValid():
                self.target_crs_widget.setCrs(crs)
        number(self.resolution_spin, stored["resolution"], float)
        if stored["describe"] in ("0", "1"):
            self.describe_check.setChecked(stored["describe"] == "1")
        self.query_edit.setText(stored["query"])

    # -- helpers -------------------------------------------------------------------

    @staticmethod
    def default_output_base() -> str:
        """Where runs go when no output folder is chosen."""
        return default_output_base(QgsProject.instance().homePath())

    def _update_engine(self) -> None:
        needs_weights = self.engine_combo.currentData() == "changeclip"
        self.weights_widget.setEnabled(needs_weights)
        self.prompt_edit.setEnabled(needs_weights)
        self.prompt_mode_combo.setEnabled(needs_weights)
        self._update_prompt_help()
        if self.task is None and self.stage_label.text().startswith("Error: "):
            self.stage_label.setText("Ready")  # e.g. "needs a weights file" is stale once the engine changed
        self.refresh_weights_info()

    def _update_prompt_help(self, *_args: object) -> None:
        """The prompt field says what it does for this engine and prompt mode."""
        text = prompt_help(str(self.engine_combo.currentData()), str(self.prompt_mode_combo.currentData()))
        self.prompt_edit.setToolTip(text)
        self.prompt_mode_combo.setToolTip(text)

    def _update_describe(self, *_args: object) -> None:
        on = self.describe_check.isChecked()
        self.query_edit.setEnabled(on)
        self.keep_matching_check.setEnabled(on)
        if on:
            self.polygons_check.setChecked(True)  # describing describes the polygons

    def refresh_weights_info(self, *_args: object) -> None:
        """Describe the weights file a run would use (the chosen one, else the folder's default).

        Called when the engine or the weights field changes, and when the settings or set-up
        dialog closes (the weights folder may have changed).
        """
        if self.engine_combo.currentData() != "changeclip":
            self.weights_info.setVisible(False)
            return
        chosen = self.weights_widget.filePath().strip()
        try:
            path = resolve_weights(chosen, BackendConfig.load().weights_dir, "changeclip")
            summary = summarize_weights(path or chosen)
            text = summary.text if chosen else f"default {os.path.basename(path or '')}: {summary.text}"
            warning = summary.warning
        except ChangeClipPluginError as exc:
            text, warning = str(exc), True
        self.weights_info.setText(text)
        self.weights_info.setStyleSheet("color: #b35900;" if warning else "color: palette(mid);")
        self.weights_info.setVisible(True)

    def _update_grid(self) -> None:
        custom = self.grid_combo.currentData() == "custom"
        self.target_crs_widget.setEnabled(custom)
        self.resolution_spin.setEnabled(custom)
        self._update_resolution_unit()

    def _update_resolution_unit(self) -> None:
        """Show the Target CRS's unit after the resolution (" m" for UTM)."""
        crs = self.target_crs_widget.crs()
        unit = QgsUnitTypes.toAbbreviatedString(crs.mapUnits()) if crs.isValid() else ""
        self.resolution_spin.setSuffix(f" {unit}" if unit else "")

    def _grid_choice(self) -> tuple[str, QgsCoordinateReferenceSystem | None, float | None]:
        """The output grid, Target CRS and Resolution to send (the last two only for 'custom')."""
        grid = str(self.grid_combo.currentData())
        if grid != "custom":  # the disabled CRS and resolution widgets keep their values, unused
            return grid, None, None
        return grid, self.target_crs_widget.crs(), self.resolution_spin.value() or None

    def _message(self, text: str, level: str = "info", diagnostics: bool = False) -> None:
        if self.iface is None:
            return
        from qgis.core import Qgis

        qlevel = {"info": Qgis.MessageLevel.Info, "success": Qgis.MessageLevel.Success,
                  "warning": Qgis.MessageLevel.Warning, "critical": Qgis.MessageLevel.Critical}[level]
        bar = self.iface.messageBar()
        if not diagnostics:
            bar.pushMessage("ChangeCLIP", text, qlevel, 8)
            return
        item = bar.createMessage("ChangeCLIP", text)
        button = QPushButton("Diagnostics", item)
        button.clicked.connect(self.show_diagnostics)
        item.layout().addWidget(button)
        bar.pushWidget(item, qlevel, 0)

    def _canvas(self) -> Any:
        return self.iface.mapCanvas() if self.iface is not None else None

    def _input(self, layer: QgsRasterLayer, other: QgsRasterLayer,
               target_crs: QgsCoordinateReferenceSystem | None = None,
               resolution: float | None = None) -> str | ExportRequest:
        """A path or an export request for ``layer``.

        Non-file layers are exported over the other raster's extent (else the map's), on its
        pixel grid (else the map's scale), or with a custom output grid (``target_crs`` and
        ``resolution``) straight onto that grid.
        """
        extent = crs = pixel = None
        if layer is not None and local_raster_path(layer) is None:
            if other is not None and local_raster_path(other) is not None:
                extent, crs, pixel = other.extent(), other.crs(), other.rasterUnitsPerPixelX()
            elif self._canvas() is not None:
                canvas = self._canvas()
                extent, crs = canvas.extent(), canvas.mapSettings().destinationCrs()
                pixel = canvas.mapUnitsPerPixel()
            if target_crs is not None:
                pixel = resolution
        return prepare_input(layer, extent, crs, pixel, target_crs=target_crs)

    def collect(self) -> tuple[protocol.DetectParams, dict[str, ExportRequest], str]:
        """The job, the exports it needs first, and the run's name (main thread).

        Raises:
            ChangeClipPluginError: a choice is invalid (message names the field).
        """
        before, after = self.before_combo.currentLayer(), self.after_combo.currentLayer()
        if before is None or after is None:
            raise ChangeClipPluginError("Pick a before and an after raster (load them into the project first)")
        same = same_raster_problem(before, after)  # the message Processing shows too
        if same is not None:
            raise ChangeClipPluginError(same)
        grid, target_crs, resolution = self._grid_choice()
        grid_choice(grid, target_crs, resolution)  # a bad grid choice is refused before any export
        inputs = {"before": self._input(before, after, target_crs, resolution),
                  "after": self._input(after, before, target_crs, resolution)}
        exports = {k: v for k, v in inputs.items() if isinstance(v, ExportRequest)}
        if grid in exports:  # a non-file layer has no grid of its own
            log(f"Output grid '{grid}': layer '{exports[grid].name}' is not a local file; it is exported on the "
                "other raster's (or the map's) grid, which the outputs then use")
        paths = {k: (v if isinstance(v, str) else "(exported when the run starts)") for k, v in inputs.items()}
        engine = self.engine_combo.currentData()
        prompt = self.prompt_edit.text() if engine == "changeclip" else ""
        prompt_mode = self.prompt_mode_combo.currentData() if engine == "changeclip" else "none"
        base = self.output_widget.filePath().strip() or self.default_output_base()
        name = run_name(before.name(), after.name(), prompt, engine)
        params = build_params(
            paths["before"], paths["after"], default_output_dir(base, before.name(), after.name()),
            engine=engine, weights=self.weights_widget.filePath(), weights_dir=BackendConfig.load().weights_dir,
            prompt=prompt, prompt_mode=prompt_mode, bands=self.bands_edit.text(), tile=self.tile_spin.value(),
            overlap=self.overlap_spin.value(), threshold=self.threshold_spin.value() or None,
            device=self.device_combo.currentText(), precision=self.precision_combo.currentText(),
            runtime=self.runtime_combo.currentText(), polygons=self.polygons_check.isChecked(), grid=grid, target_crs=target_crs, resolution=resolution,
            min_area_m2=self.min_area_spin.value(), min_pixels=self.min_pixels_spin.value(),
            **self._describe_options())
        unreadable = unreadable_reason(params.weights) if params.weights else None
        if unreadable:  # refused here, in words, before a backend is started or a run folder made
            raise ChangeClipPluginError(f"Weights file {params.weights} is not ChangeCLIP weights: {unreadable}; "
                                        "pick a ChangeCLIP .safetensors file or an official .pth checkpoint")
        return params, exports, name

    def _describe_options(self) -> dict[str, object]:
        describe = self.describe_check.isChecked()
        query = self.query_edit.text().strip() if describe else ""
        return {"describe": describe, "query": query, "keep_matching": bool(query) and
                self.keep_matching_check.isChecked(),
                "describe_weights": resolve_describe_weights("", BackendConfig.load().weights_dir) if describe else None}

    # -- actions -------------------------------------------------------------------

    def start_run(self) -> DetectTask | None:
        """Build the job and start it in the background; returns the task (None if refused)."""
        if self.task is not None:
            return None
        try:
            params, exports, name = self.collect()
        except ChangeClipPluginError as exc:
            self._fail(str(exc))
            return None
        os.makedirs(params.output_dir, exist_ok=True)
        if self.output_widget.filePath().strip():
            set_value(KEY_OUTPUT_BASE, self.output_widget.filePath().strip())
        self._save_choices()
        task = DetectTask(params, name, exports)
        task.progressChanged.connect(lambda value: self.progress_bar.setValue(int(value)))
        task.stageChanged.connect(self.stage_label.setText)
        task.succeeded.connect(self._succeeded)
        task.failedWith.connect(self._fail)
        self.task = task
        self._set_running(True)
        self.summary_label.setText("")
        self.stage_label.setText("Queued")
        QgsApplication.taskManager().addTask(task)
        return task

    def cancel_run(self) -> None:
        """Cancel the running job (the backend removes partial outputs)."""
        if self.task is not None:
            self.stage_label.setText("Cancelling…")
            self.task.cancel()

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _succeeded(self, summary: dict) -> None:
        self.task = None
        self._set_running(False)
        self.last_summary = summary
        self.progress_bar.setValue(100)
        warnings = [str(w) for w in summary.get("warnings") or []]
        text = f"{result_line(summary)}\nEngine {engine_name(str(summary.get('engine', '?')))} on " \
            f"{summary.get('device', '?')}"
        matches = matching_line(summary)
        if matches:
            text += f"\n{matches}"
        text += runtime_line(summary)
        self.summary_label.setText(text + "".join(f"\nWarning: {w}" for w in warnings))
        self.stage_label.setText("Done" + (f" ({len(warnings)} warning{'s' if len(warnings) > 1 else ''})"
                                           if warnings else ""))
        self._message(text.replace("\n", "; "), "success")
        for warning in warnings:  # e.g. no CRS, geographic CRS, resampled input, random weights
            log(f"run finished with a warning: {warning}", "warning")
            self._message(warning, "warning")
        self.diagnostics_button.setStyleSheet("")
        self.check_backend()  # show where the backend computes
        self.runFinished.emit(summary)

    def _fail(self, message: str) -> None:
        cancelled = self.task is not None and self.task.cancelled_by_user
        unavailable = self.task is not None and self.task.backend_unavailable
        if self.task is not None:
            self.task.remove_run_folder()  # a failed or cancelled run leaves no empty folder behind
        self.task = None
        self._set_running(False)
        if unavailable:  # point at the report that says why
            self.backend_label.setText(f"Backend not available: {message}")
            self.diagnostics_button.setStyleSheet("font-weight: bold")
        self.progress_bar.setValue(0)
        self.stage_label.setText(("Cancelled: " if cancelled else "Error: ") + message)
        self._message(message, "info" if cancelled else "critical", diagnostics=unavailable)
        self.runFailed.emit(message)

    def refresh_backend_line(self, *_args: object) -> None:
        """Show where the backend is configured now (after Settings or set-up changed it), not connected yet."""
        if self.check_task is None:
            self.backend_label.setText(f"Backend: {BackendConfig.load().describe()} (not connected)")
            self.diagnostics_button.setStyleSheet("")

    def check_backend(self) -> BackendCheckTask:
        """Start/reach the backend in the background and show its device line."""
        self.backend_label.setText("Backend: connecting…")
        task = BackendCheckTask()
        task.statusReady.connect(self._backend_ready)
        task.failedWith.connect(self._backend_failed)
        self.check_task = task
        QgsApplication.taskManager().addTask(task)
        return task

    def _backend_ready(self, status: dict) -> None:
        self.check_task = None
        self.backend_label.setText(f"Backend {status.get('version', '')}: {device_line(status)}")

    def _backend_failed(self, message: str) -> None:
        self.check_task = None
        self.backend_label.setText(f"Backend not available: {message}")
        self.diagnostics_button.setStyleSheet("font-weight: bold")

    def shutdown(self) -> None:
        """Cancel a running job and detach from its tasks and the project (before the dock is deleted)."""
        self._pair_timer.stop()
        for signal, slot in self._project_signals:
            try:
                signal.disconnect(slot)
            except TypeError:  # already disconnected
                pass
        self._project_signals = []
        for task in (self.task, self.check_task):
            if task is None:
                continue
            try:
                for name in ("progressChanged", "stageChanged", "succeeded", "failedWith", "statusReady"):
                    signal = getattr(task, name, None)
                    if signal is None:
                        continue
                    try:
                        signal.disconnect()
                    except TypeError:  # nothing connected
                        pass
                task.cancel()
            except RuntimeError:  # the task manager already deleted the finished task
                pass
        self.task = self.check_task = None
        self.train_page.shutdown()

    def show_diagnostics(self) -> None:
        """Open the diagnostics report dialog."""
        from .diagnostics_dialog import DiagnosticsDialog

        self._diagnostics = DiagnosticsDialog(self)
        self._diagnostics.show()
