"""The dock's Train page: digitise changes, make training data, train, and hand the weights to detection.

The page only turns widgets into jobs (:class:`protocol.DatasetParams` and, through
:func:`core.training_job.build_train_params`, :class:`protocol.TrainParams`) and hands them to a
:class:`~changeclip_qgis.tasks.train_task.TrainTask`; it never waits on the backend itself. The
change polygons are checked in QGIS first (:mod:`core.training_inputs`) and written, as they are
on screen (unsaved edits and the selection included), to a GeoPackage in the run folder.

The last run is remembered (settings key :data:`KEY_LAST_RUN`): when QGIS was closed (or the
backend stopped) before it finished, the page offers **Resume** the next time it opens.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFillSymbol,
    QgsProject,
    QgsRasterLayer,
    QgsVectorFileWriter,
    QgsVectorLayer,
)
from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..compat import POLYGON_LAYER_FILTER, RASTER_LAYER_FILTER, VECTOR_WRITE_OK
from ..core import protocol
from ..core.errors import ChangeClipPluginError
from ..core.layers import ExportRequest, local_raster_path, prepare_input
from ..core.log import log
from ..core.params import default_output_base
from ..core.runner import format_duration
from ..core.settings import KEY_OUTPUT_BASE, BackendConfig, get, set_value
from ..core.training_inputs import TrainingInputError, check_training_polygons, polygon_figures
from ..core.training_job import VALIDATIONS_PER_RUN, TrainingChoice, build_train_params
from ..core.weights_info import weights_variant
from ..tasks.train_task import ESTIMATE_ITERATIONS, TrainTask
from .training_chart import TrainingChart

KEY_LAST_RUN = "train/last_run"
"""Settings key of the last training run: its job parameters as JSON (for Resume)."""
DEFAULT_ITERATIONS = 300
"""A first fine-tuning small enough for a laptop; the estimate says how long it takes."""
CHANGE_STYLE = {"color": "255,0,0,50", "outline_color": "255,0,0,255", "outline_width": "0.6"}
AOI_STYLE = {"color": "0,0,0,0", "outline_color": "0,160,255,255", "outline_width": "0.8",
             "outline_style": "dash"}


def run_state(run_dir: str) -> tuple[bool, int | None, int | None]:
    """Whether ``run_dir`` holds an unfinished, resumable run, and its last logged iteration / total."""
    if not os.path.isfile(os.path.join(run_dir, protocol.RUN_STATE_NAME)):
        return False, None, None
    iteration = total = None
    try:
        with open(os.path.join(run_dir, protocol.RUN_METRICS_NAME), encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if row.get("kind") == "end":
                    return False, row.get("iteration"), row.get("iteration")
                if isinstance(row.get("iteration"), int):
                    iteration = row["iteration"]
                total = row.get("iters", total)
    except (OSError, ValueError):
        pass
    return True, iteration, total


def write_polygons(layer: QgsVectorLayer, path: str, selected_only: bool) -> str:
    """Write ``layer``'s polygons as shown (unsaved edits included) to a new GeoPackage.

    Raises:
        ChangeClipPluginError: the file cannot be written.
    """
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = "polygons"
    options.onlySelectedFeatures = selected_only
    options.skipAttributeCreation = True  # geometry is all the labels need (and unsaved fids do not convert)
    result = QgsVectorFileWriter.writeAsVectorFormatV3(layer, path, QgsProject.instance().transformContext(),
                                                       options)
    if result[0] != VECTOR_WRITE_OK:
        raise ChangeClipPluginError(f"cannot write the polygons of '{layer.name()}' to {path}: {result[1]}")
    return path


class TrainPage(QWidget):
    """The Train page.

    Args:
        iface: the QGIS interface (None in tests: no canvas tool, no message bar).
        detect_weights: returns the Detect page's weights file (the default start point).
        parent: parent widget.

    Signals:
        trainingFinished(dict): the training job's result.
        trainingFailed(str): the message of a failed or cancelled run.
        estimateReady(dict): the measured speed.
        useWeights(str): the weights file to use for detection.
    """

    trainingFinished = pyqtSignal(dict)
    trainingFailed = pyqtSignal(str)
    estimateReady = pyqtSignal(dict)
    useWeights = pyqtSignal(str)

    def __init__(self, iface: Any = None, detect_weights: Callable[[], str] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.detect_weights = detect_weights or (lambda: "")
        self.task: TrainTask | None = None
        self.last_result: dict[str, Any] | None = None
        self.last_params: protocol.TrainParams | None = None
        self.seconds_per_iteration: float | None = None
        self.seconds_per_validation = 0.0
        self.device = ""
        self._watched: QgsVectorLayer | None = None
        self._build()
        self.refresh_figures()
        self.check_unfinished()

    # -- construction --------------------------------------------------------------

    def _build(self) -> None:  # noqa: PLR0915 - one flat list of widgets reads best
        outer = QVBoxLayout(self)
        form = QFormLayout()
        self.before_combo = QgsMapLayerComboBox(self)
        self.before_combo.setFilters(RASTER_LAYER_FILTER)
        form.addRow("Before", self.before_combo)
        self.after_combo = QgsMapLayerComboBox(self)
        self.after_combo.setFilters(RASTER_LAYER_FILTER)
        form.addRow("After", self.after_combo)
        row = QHBoxLayout()
        self.changes_combo = QgsMapLayerComboBox(self)
        self.changes_combo.setFilters(POLYGON_LAYER_FILTER)
        self.changes_combo.setAllowEmptyLayer(True)
        self.changes_combo.layerChanged.connect(self._watch_changes)
        row.addWidget(self.changes_combo, 1)
        self.new_changes_button = QPushButton("New layer…", self)
        self.new_changes_button.setToolTip("a GeoPackage polygon layer in the project CRS, ready to draw in")
        self.new_changes_button.clicked.connect(lambda: self.new_polygon_layer("changes"))
        row.addWidget(self.new_changes_button)
        form.addRow("Changes", row)
        self.figures_label = QLabel("", self)
        self.figures_label.setWordWrap(True)
        form.addRow("", self.figures_label)
        self.selected_check = QCheckBox("Selected features only", self)
        self.selected_check.toggled.connect(self.refresh_figures)
        form.addRow("", self.selected_check)
        row = QHBoxLayout()
        self.aoi_combo = QgsMapLayerComboBox(self)
        self.aoi_combo.setFilters(POLYGON_LAYER_FILTER)
        self.aoi_combo.setAllowEmptyLayer(True)
        self.aoi_combo.setLayer(None)
        self.aoi_combo.setToolTip("where your labels are complete; empty: the whole overlap of the rasters")
        row.addWidget(self.aoi_combo, 1)
        self.new_aoi_button = QPushButton("New layer…", self)
        self.new_aoi_button.clicked.connect(lambda: self.new_polygon_layer("aoi"))
        row.addWidget(self.new_aoi_button)
        form.addRow("Labelled area (AOI)", row)
        self.weights_widget = QgsFileWidget(self)
        self.weights_widget.setFilter("Weights (*.safetensors *.pth *.pt)")
        self.weights_widget.lineEdit().setPlaceholderText("the Detect page's weights")
        self.weights_widget.fileChanged.connect(self._update_variant)
        form.addRow("Start from", self.weights_widget)
        self.scratch_check = QCheckBox("From scratch (random weights: needs far more data)", self)
        self.scratch_check.toggled.connect(self._update_variant)
        form.addRow("", self.scratch_check)
        self.variant_combo = QComboBox(self)
        self.variant_combo.addItems(list(protocol.TRAIN_VARIANTS))
        form.addRow("Network", self.variant_combo)
        row = QHBoxLayout()
        self.iterations_spin = QSpinBox(self)
        self.iterations_spin.setRange(1, 1_000_000)
        self.iterations_spin.setValue(DEFAULT_ITERATIONS)
        self.iterations_spin.valueChanged.connect(self._show_estimate)
        row.addWidget(self.iterations_spin)
        self.estimate_button = QPushButton("Estimate", self)
        self.estimate_button.setToolTip(f"train {ESTIMATE_ITERATIONS} iterations on your data to measure the "
                                        "time per iteration on the backend's device")
        self.estimate_button.clicked.connect(self.start_estimate)
        row.addWidget(self.estimate_button)
        form.addRow("Iterations", row)
        self.estimate_label = QLabel("Estimate measures how long the training takes on the backend's device.",
                                     self)
        self.estimate_label.setWordWrap(True)
        form.addRow("", self.estimate_label)
        outer.addLayout(form)

        self.advanced_box = QgsCollapsibleGroupBox("Advanced", self)
        self.advanced_box.setCollapsed(True)
        adv = QFormLayout(self.advanced_box)
        self.tile_spin = QSpinBox(self.advanced_box)
        self.tile_spin.setRange(64, 1024)
        self.tile_spin.setSingleStep(32)
        self.tile_spin.setValue(256)
        adv.addRow("Tile size (px)", self.tile_spin)
        self.batch_spin = QSpinBox(self.advanced_box)
        self.batch_spin.setRange(0, 256)
        self.batch_spin.setSpecialValueText("recipe")
        self.batch_spin.setValue(4)
        self.batch_spin.setToolTip("tiles per iteration (0: the official recipe's, 20 rn50 / 12 vit-b-16)")
        adv.addRow("Batch size", self.batch_spin)
        self.device_edit = QComboBox(self.advanced_box)
        self.device_edit.setEditable(True)
        self.device_edit.addItems(["auto", "cpu", "cuda"])
        adv.addRow("Device", self.device_edit)
        self.output_widget = QgsFileWidget(self.advanced_box)
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.output_widget.lineEdit().setPlaceholderText(self.output_base())
        adv.addRow("Runs folder", self.output_widget)
        outer.addWidget(self.advanced_box)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run", self)
        self.run_button.clicked.connect(self.start_run)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_run)
        self.resume_button = QPushButton("Resume", self)
        self.resume_button.setEnabled(False)
        self.resume_button.clicked.connect(self.resume_run)
        for button in (self.run_button, self.cancel_button, self.resume_button):
            buttons.addWidget(button)
        outer.addLayout(buttons)
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setRange(0, 100)
        outer.addWidget(self.progress_bar)
        self.status_label = QLabel("Ready", self)
        self.status_label.setWordWrap(True)
        outer.addWidget(self.status_label)
        self.chart = TrainingChart(self)
        outer.addWidget(self.chart, 1)
        self.result_label = QLabel("", self)
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.result_label)
        self.use_weights_button = QPushButton("Use these weights for detection", self)
        self.use_weights_button.setEnabled(False)
        self.use_weights_button.clicked.connect(self.use_trained_weights)
        outer.addWidget(self.use_weights_button)

    # -- layers --------------------------------------------------------------------

    def output_base(self) -> str:
        """The folder that holds the training runs."""
        chosen = self.output_widget.filePath().strip() if hasattr(self, "output_widget") else ""
        base = chosen or get(KEY_OUTPUT_BASE) or default_output_base(QgsProject.instance().homePath())
        return os.path.join(base, "training") if not chosen else base

    def new_polygon_layer(self, role: str) -> QgsVectorLayer:
        """Create a GeoPackage polygon layer in the project CRS, styled, added to the map, in edit mode
        with the add-polygon tool active (when there is a QGIS window), and select it on the page."""
        project = QgsProject.instance()
        crs = project.crs() if project.crs().isValid() else self._raster_crs()
        folder = project.homePath() or os.path.join(self.output_base(), "layers")
        os.makedirs(folder, exist_ok=True)
        stem = "changes" if role == "changes" else "labelled_area"
        path = os.path.join(folder, f"{stem}.gpkg")
        n = 1
        while os.path.exists(path):
            n += 1
            path = os.path.join(folder, f"{stem}_{n}.gpkg")
        scratch = QgsVectorLayer(f"Polygon?crs={crs.authid() or 'EPSG:4326'}&field=note:string(80)", stem, "memory")
        if not crs.authid():
            scratch.setCrs(crs)
        write_polygons(scratch, path, False)
        name = "Changes (training)" if role == "changes" else "Labelled area (training)"
        layer = QgsVectorLayer(f"{path}|layername=polygons", name, "ogr")
        if not layer.isValid():
            raise ChangeClipPluginError(f"cannot open the new layer {path}")
        style = CHANGE_STYLE if role == "changes" else AOI_STYLE
        layer.renderer().setSymbol(QgsFillSymbol.createSimple(style))
        project.addMapLayer(layer)
        (self.changes_combo if role == "changes" else self.aoi_combo).setLayer(layer)
        layer.startEditing()
        if self.iface is not None:
            self.iface.setActiveLayer(layer)
            self.iface.actionAddFeature().trigger()
        log(f"new {role} layer {path}")
        return layer

    def _raster_crs(self) -> QgsCoordinateReferenceSystem:
        layer = self.before_combo.currentLayer()
        return layer.crs() if layer is not None else QgsCoordinateReferenceSystem("EPSG:4326")

    def _watch_changes(self, layer: Any = None) -> None:
        if self._watched is not None:
            for signal in (self._watched.featureAdded, self._watched.featureDeleted,
                           self._watched.geometryChanged, self._watched.selectionChanged):
                try:
                    signal.disconnect(self.refresh_figures)
                except (TypeError, RuntimeError):
                    pass
        self._watched = layer if isinstance(layer, QgsVectorLayer) else None
        if self._watched is not None:
            for signal in (self._watched.featureAdded, self._watched.featureDeleted,
                           self._watched.geometryChanged, self._watched.selectionChanged):
                signal.connect(self.refresh_figures)
        self.refresh_figures()

    def refresh_figures(self, *_args: object) -> None:
        """Show how many polygons and how much area the change layer labels."""
        layer = self.changes_combo.currentLayer()
        if not isinstance(layer, QgsVectorLayer):
            self.figures_label.setText("No change layer: click New layer… and draw the changes you see")
            return
        figures = polygon_figures(layer, QgsProject.instance().transformContext(),
                                  selected_only=self.selected_check.isChecked())
        self.figures_label.setText(figures.text())

    def _update_variant(self, *_args: object) -> None:
        if self.scratch_check.isChecked():
            self.variant_combo.setEnabled(True)
            return
        path = self.weights_widget.filePath().strip() or self.detect_weights()
        variant = weights_variant(path) if path else None
        if variant in protocol.TRAIN_VARIANTS:
            self.variant_combo.setCurrentText(variant)
        self.variant_combo.setEnabled(variant is None)

    # -- jobs ----------------------------------------------------------------------

    def _raster(self, layer: QgsRasterLayer, other: QgsRasterLayer, role: str
                ) -> tuple[str, ExportRequest | None]:
        if not isinstance(layer, QgsRasterLayer):
            raise ChangeClipPluginError(f"choose a {role} raster layer")
        path = local_raster_path(layer)
        if path is not None:
            return path, None
        prepared = prepare_input(layer, other.extent(), other.crs(), other.rasterUnitsPerPixelX())
        if isinstance(prepared, ExportRequest):
            return "", prepared
        return prepared, None

    def collect(self, estimate: bool = False) -> tuple[protocol.DatasetParams, protocol.TrainParams,
                                                       dict[str, ExportRequest]]:
        """Check the page and build the two jobs (a new run folder; nothing is started).

        Raises:
            ChangeClipPluginError: the first problem, saying what to do.
        """
        before, after = self.before_combo.currentLayer(), self.after_combo.currentLayer()
        if not isinstance(before, QgsRasterLayer) or not isinstance(after, QgsRasterLayer):
            raise ChangeClipPluginError("choose the Before and After raster layers")
        changes = self.changes_combo.currentLayer()
        if changes is None:
            raise TrainingInputError("CHANGES: choose the change polygon layer, or click New layer… and draw them")
        aoi = self.aoi_combo.currentLayer()
        selected = self.selected_check.isChecked()
        for warning in check_training_polygons(changes, aoi, before, after,
                                               QgsProject.instance().transformContext(), selected):
            log(warning, "warning")
        stem = os.path.join(self.output_base(), time.strftime("estimate_%Y%m%d_%H%M%S" if estimate
                                                               else "train_%Y%m%d_%H%M%S"))
        root, n = stem, 1
        while os.path.exists(root):
            n += 1
            root = f"{stem}_{n}"
        os.makedirs(root)
        changes_path = write_polygons(changes, os.path.join(root, "changes.gpkg"), selected)
        aoi_path = write_polygons(aoi, os.path.join(root, "aoi.gpkg"), False) if aoi is not None else None
        exports: dict[str, ExportRequest] = {}
        before_path, request = self._raster(before, after, "Before")
        if request is not None:
            exports["before"] = request
        after_path, request = self._raster(after, before, "After")
        if request is not None:
            exports["after"] = request
        tile = self.tile_spin.value()
        dataset = protocol.DatasetParams(before=before_path or "pending-export", after=after_path or "pending-export",
                                         changes=changes_path, output_dir=os.path.join(root, "dataset"),
                                         layer="polygons", aoi=aoi_path, aoi_layer="polygons" if aoi_path else None,
                                         tile=tile, stride=max(32, tile * 3 // 4))
        init = "scratch" if self.scratch_check.isChecked() else (
            self.weights_widget.filePath().strip() or self.detect_weights().strip())
        if not init:
            raise ChangeClipPluginError("choose the weights to start from (the Detect page has none), or tick "
                                        "From scratch")
        iterations = ESTIMATE_ITERATIONS if estimate else self.iterations_spin.value()
        choice = TrainingChoice(datasets=[dataset.output_dir], run_dir=os.path.join(root, "run"),
                                variant=self.variant_combo.currentText(), init=init, iterations=iterations,
                                batch_size=self.batch_spin.value() or None,
                                device=self.device_edit.currentText().strip() or "auto")
        if estimate:
            choice.val_every = iterations  # one validation, at the end: its time is measured too
        train = build_train_params(choice, BackendConfig.load().weights_dir, tile_size=tile)
        if estimate:
            train = protocol.TrainParams(**{**train.to_dict(), "log_every": 1})
        return dataset, train, exports

    def _start(self, task: TrainTask, running_text: str) -> TrainTask:
        from qgis.core import QgsApplication

        task.stageChanged.connect(self.status_label.setText)
        task.progressChanged.connect(lambda value: self.progress_bar.setValue(int(value)))
        self.task = task
        self._set_running(True)
        self.status_label.setText(running_text)
        QgsApplication.taskManager().addTask(task)
        return task

    def start_run(self) -> TrainTask | None:
        """Make the training data and train (in the background); returns the task (None if refused)."""
        if self.task is not None:
            return None
        try:
            dataset, train, exports = self.collect()
        except ChangeClipPluginError as exc:
            self._fail(str(exc))
            return None
        return self._train(TrainTask(dataset, train, exports))

    def resume_run(self) -> TrainTask | None:
        """Continue the last unfinished run from its checkpoint."""
        if self.task is not None or self.last_params is None:
            return None
        params = protocol.TrainParams(**{**self.last_params.to_dict(), "resume": True, "overwrite": False})
        return self._train(TrainTask(None, params))

    def _train(self, task: TrainTask) -> TrainTask:
        self.last_params = task.train
        set_value(KEY_LAST_RUN, json.dumps(task.train.to_dict()))
        self.chart.clear()
        self.result_label.setText("")
        self.use_weights_button.setEnabled(False)
        task.eventReceived.connect(self._on_event)
        task.progressInfo.connect(self._on_progress)
        task.succeeded.connect(self._succeeded)
        task.failedWith.connect(self._fail)
        return self._start(task, "Starting…")

    def start_estimate(self) -> TrainTask | None:
        """Measure the seconds per iteration with a short warm-up run on the page's data."""
        if self.task is not None:
            return None
        try:
            dataset, train, exports = self.collect(estimate=True)
        except ChangeClipPluginError as exc:
            self._fail(str(exc))
            return None
        task = TrainTask(dataset, train, exports, mode="estimate")
        task.succeeded.connect(self._estimated)
        task.failedWith.connect(self._fail)
        return self._start(task, f"Measuring: {ESTIMATE_ITERATIONS} iterations on your data…")

    def cancel_run(self) -> None:
        """Cancel: the backend saves a resumable checkpoint at the end of the current iteration."""
        if self.task is not None:
            self.status_label.setText("Cancelling: saving a resumable checkpoint…")
            self.task.cancel()

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.estimate_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.resume_button.setEnabled(not running and self._resumable())

    def _resumable(self) -> bool:
        return self.last_params is not None and run_state(self.last_params.run_dir)[0]

    # -- live feedback -------------------------------------------------------------

    def _on_event(self, event: dict) -> None:
        self.chart.add_event(event)
        if event.get("event") == "start":
            self.device = str(event.get("device") or "")
        elif event.get("event") == "note":
            log(f"training: {event.get('message')}", "warning")

    def _on_progress(self, progress: protocol.JobProgress) -> None:
        if progress.stage != "training" or not progress.iterations:
            return
        eta = f", about {format_duration(progress.eta_s)} left" if progress.eta_s else ""
        best = progress.best or {}
        f1 = f", best val F1 {100 * best['f1']:.1f} %" if isinstance(best.get("f1"), (int, float)) else ""
        self.status_label.setText(f"Training on {progress.device or self.device or '?'}: iteration "
                                  f"{progress.iteration or 0}/{progress.iterations}{eta}{f1}")

    def _succeeded(self, result: dict) -> None:
        self.task = None
        self.last_result = result
        self._set_running(False)
        self.progress_bar.setValue(100)
        best = result.get("best") or {}
        weights = (result.get("outputs") or {}).get("weights")

        def pct(key: str) -> str:
            value = best.get(key)
            return "-" if not isinstance(value, (int, float)) else f"{100 * value:.1f} %"

        stopped = " (stopped early)" if result.get("status") == "early-stopped" else ""
        self.result_label.setText(
            f"Done{stopped}: best change F1 {pct('f1')}, IoU {pct('iou')}, precision {pct('precision')}, recall "
            f"{pct('recall')} at iteration {best.get('iteration', '-')} of {result.get('iters')}\n{weights or ''}")
        self.status_label.setText("Done")
        self.use_weights_button.setEnabled(bool(weights))
        self.trainingFinished.emit(result)

    def _estimated(self, result: dict) -> None:
        self.task = None
        self._set_running(False)
        self.progress_bar.setValue(0)
        self.seconds_per_iteration = float(result["seconds_per_iteration"])
        self.seconds_per_validation = float(result.get("seconds_per_validation") or 0.0)
        self.device = str(result.get("device") or "")
        self.status_label.setText("Ready")
        self._show_estimate()
        self.estimateReady.emit(result)

    def _show_estimate(self, *_args: object) -> None:
        if self.seconds_per_iteration is None:
            return
        iterations = self.iterations_spin.value()
        validations = VALIDATIONS_PER_RUN
        total = iterations * self.seconds_per_iteration + validations * self.seconds_per_validation
        self.estimate_label.setText(f"about {format_duration(total)} on {self.device or 'the backend'} "
                                    f"(measured {self.seconds_per_iteration:.2f} s/iteration)")

    def _fail(self, message: str) -> None:
        task = self.task
        cancelled = task is not None and task.cancelled_by_user
        self.task = None
        self._set_running(False)
        self.progress_bar.setValue(0)
        resumable = self._resumable() and (task is None or task.mode == "train")
        hint = " — Resume continues it" if resumable else ""
        self.status_label.setText(("Cancelled: " if cancelled else "Error: ") + message + hint)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("ChangeCLIP", message, level=0 if cancelled else 2, duration=10)
        self.trainingFailed.emit(message)

    def use_trained_weights(self) -> str | None:
        """Hand the run's best weights to the Detect page."""
        weights = ((self.last_result or {}).get("outputs") or {}).get("weights")
        if weights:
            self.useWeights.emit(str(weights))
        return weights

    def check_unfinished(self) -> None:
        """Offer Resume when the last run did not finish (QGIS closed, backend stopped or killed)."""
        text = get(KEY_LAST_RUN)
        if not text:
            return
        try:
            params = protocol.TrainParams.from_dict(json.loads(text))
        except (ValueError, TypeError, protocol.ParamError):
            return
        unfinished, iteration, total = run_state(params.run_dir)
        self.last_params = params
        if unfinished:
            where = f" at iteration {iteration} of {total}" if iteration is not None else ""
            self.status_label.setText(f"An unfinished training run{where} is in {params.run_dir}: Resume continues "
                                      "it from its last checkpoint")
        self.resume_button.setEnabled(unfinished and self.task is None)

    def shutdown(self) -> None:
        """Cancel a running task (the backend saves a resumable checkpoint) and detach from it."""
        task, self.task = self.task, None
        if task is None:
            return
        try:
            for name in ("stageChanged", "eventReceived", "progressInfo", "succeeded", "failedWith",
                         "progressChanged"):
                try:
                    getattr(task, name).disconnect()
                except TypeError:
                    pass
            task.cancel()
        except RuntimeError:  # already deleted by the task manager
            pass

