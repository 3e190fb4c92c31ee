"""Processing algorithm ``changeclip:trainmodel``: train or fine-tune ChangeCLIP on dataset folders.

Runs ``changeclip train`` as a backend job (``kind`` ``train``): progress is the iteration, each
validation's change metrics go to the log, a cancel makes the backend save a resumable checkpoint
(run it again with RESUME to continue). WEIGHTS is the best weights file of the run, which
``changeclip:detectchanges`` takes as its WEIGHTS.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..compat import NUMBER_DOUBLE, NUMBER_INTEGER, PARAMETER_ADVANCED, SOURCE_FILE
from ..core import protocol
from ..core.errors import ChangeClipPluginError
from ..core.settings import BackendConfig
from ..core.training_job import TrainingChoice, build_train_params
from .backend_algorithm import BackendAlgorithm
from .job_feedback import JobLog, run_backend_job


class TrainModelAlgorithm(BackendAlgorithm):
    """Train (or fine-tune) ChangeCLIP on training-data folders; outputs the best weights."""

    group_name = "Training"
    group_id = "training"
    supports_batch = False

    DATASETS = "DATASETS"
    VARIANT = "VARIANT"
    INIT = "INIT"
    ITERATIONS = "ITERATIONS"
    EPOCHS = "EPOCHS"
    BATCH_SIZE = "BATCH_SIZE"
    LEARNING_RATE = "LEARNING_RATE"
    FREEZE = "FREEZE"
    PROMPT_MODE = "PROMPT_MODE"
    PROMPT = "PROMPT"
    PRECISION = "PRECISION"
    DEVICE = "DEVICE"
    VAL_EVERY = "VAL_EVERY"
    PATIENCE = "PATIENCE"
    SEED = "SEED"
    RESUME = "RESUME"
    OUTPUT = "OUTPUT"
    WEIGHTS = "WEIGHTS"
    BEST_F1 = "BEST_F1"
    BEST_IOU = "BEST_IOU"
    ITERATIONS_DONE = "ITERATIONS_DONE"

    def name(self) -> str:  # noqa: D102
        return "trainmodel"

    def displayName(self) -> str:  # noqa: D102
        return "Train a model (ChangeCLIP)"

    def tags(self) -> list[str]:  # noqa: D102
        return ["change", "training", "fine-tune", "changeclip", "deep learning"]

    def shortHelpString(self) -> str:  # noqa: D102
        return (
            "Trains or fine-tunes the ChangeCLIP network on one or more training-data folders (DATASETS, made by "
            "'Create training data (ChangeCLIP)' or 'changeclip dataset').\n\n"
            "VARIANT is the network (rn50 or vit-b-16; tiny-* are for tests). INIT is where training starts: a "
            "ChangeCLIP weights file fine-tunes it (recommended; empty = the weights set in the plugin settings), "
            "'clip:FILE' starts from a local CLIP file, 'clip:openai' downloads OpenAI CLIP (needs the internet), "
            "'scratch' starts from random weights.\n"
            "ITERATIONS (optimizer steps) or EPOCHS (passes over the training tiles; when given it wins) set the "
            "length; BATCH_SIZE the tiles per step (empty: the official recipe's). Advanced: LEARNING_RATE, "
            "FREEZE (parts not trained), PROMPT_MODE (none: constant prompts, as the official training without tags; words: "
            "the PROMPT words, e.g. 'building'), PRECISION, DEVICE, "
            "VAL_EVERY (validation interval, empty: ten validations per run), PATIENCE (stop after that many "
            "validations without a better change F1), SEED, and RESUME (continue the run in OUTPUT from its "
            "checkpoint, e.g. after a cancel).\n\n"
            "Each validation's change precision, recall, F1 and IoU appear in the log. Outputs: the run folder "
            "(OUTPUT), WEIGHTS (the best weights file: use it as WEIGHTS of 'Detect changes'), BEST_F1, BEST_IOU "
            "and ITERATIONS_DONE. Cancelling saves a resumable checkpoint.\n"
            "Runs in the ChangeCLIP backend (docs/training-in-qgis.md).")

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: D102
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.DATASETS, "Training-data folders (with dataset.json)", SOURCE_FILE))
        self.addParameter(QgsProcessingParameterEnum(
            self.VARIANT, "Network variant", options=list(protocol.TRAIN_VARIANTS), defaultValue="rn50",
            usesStaticStrings=True))
        init = QgsProcessingParameterFile(
            self.INIT, "Start from (weights file; or clip:FILE, clip:openai, scratch; empty = settings' weights)",
            optional=True)
        init.setFileFilter("All files (*)")  # the default '*.*' refuses clip:openai and scratch (no dot)
        self.addParameter(init)
        self.addParameter(QgsProcessingParameterNumber(
            self.ITERATIONS, "Iterations", NUMBER_INTEGER, 500, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            self.EPOCHS, "Epochs (instead of iterations)", NUMBER_DOUBLE, None,
            optional=True, minValue=0.01))
        self.addParameter(QgsProcessingParameterNumber(
            self.BATCH_SIZE, "Batch size (empty = recipe)", NUMBER_INTEGER, None,
            optional=True, minValue=1, maxValue=4096))
        advanced = [
            QgsProcessingParameterNumber(self.LEARNING_RATE, "Learning rate (empty = recipe, 1e-4)",
                                         NUMBER_DOUBLE, None, optional=True, minValue=1e-9),
            QgsProcessingParameterEnum(self.FREEZE, "Parts not trained", options=list(protocol.FREEZE_CHOICES),
                                       defaultValue="none", usesStaticStrings=True),
            QgsProcessingParameterEnum(self.PROMPT_MODE, "Prompt mode", options=["none", "words"],
                                       defaultValue="none", usesStaticStrings=True),
            QgsProcessingParameterString(self.PROMPT, "Prompt words (prompt mode words, e.g. building)",
                                         defaultValue="", optional=True),
            QgsProcessingParameterEnum(self.PRECISION, "Precision", options=list(protocol.TRAIN_PRECISIONS),
                                       defaultValue="auto", usesStaticStrings=True),
            QgsProcessingParameterString(self.DEVICE, f"Device ({protocol.DEVICES_HELP})", defaultValue="auto"),
            QgsProcessingParameterNumber(self.VAL_EVERY, "Validate every N iterations (empty = 10 per run)",
                                         NUMBER_INTEGER, None, optional=True, minValue=1),
            QgsProcessingParameterNumber(self.PATIENCE, "Early stop after N validations without improvement",
                                         NUMBER_INTEGER, None, optional=True, minValue=1),
            QgsProcessingParameterNumber(self.SEED, "Seed", NUMBER_INTEGER, 0, minValue=0),
            QgsProcessingParameterBoolean(self.RESUME, "Resume the run in the output folder", defaultValue=False),
        ]
        for param in advanced:
            param.setFlags(param.flags() | PARAMETER_ADVANCED)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Run folder"))
        self.addOutput(QgsProcessingOutputFile(self.WEIGHTS, "Best weights (for Detect changes)"))
        self.addOutput(QgsProcessingOutputNumber(self.BEST_F1, "Best validation F1 (change)"))
        self.addOutput(QgsProcessingOutputNumber(self.BEST_IOU, "Best validation IoU (change)"))
        self.addOutput(QgsProcessingOutputNumber(self.ITERATIONS_DONE, "Iterations done"))

    def _optional_number(self, parameters: dict[str, Any], key: str, context: QgsProcessingContext,
                         integer: bool) -> float | int | None:
        if parameters.get(key) in (None, ""):
            return None
        return self.parameterAsInt(parameters, key, context) if integer \
            else self.parameterAsDouble(parameters, key, context)

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:  # noqa: D102
        datasets = [str(p) for p in self.parameterAsFileList(parameters, self.DATASETS, context) if p]
        epochs = self._optional_number(parameters, self.EPOCHS, context, integer=False)
        choice = TrainingChoice(
            datasets=datasets, run_dir=self.parameterAsString(parameters, self.OUTPUT, context),
            variant=self.parameterAsEnumString(parameters, self.VARIANT, context) or "rn50",
            init=(self.parameterAsString(parameters, self.INIT, context) or "").strip(),
            iterations=None if epochs else self.parameterAsInt(parameters, self.ITERATIONS, context),
            epochs=epochs,
            batch_size=self._optional_number(parameters, self.BATCH_SIZE, context, integer=True),  # type: ignore[arg-type]
            lr=self._optional_number(parameters, self.LEARNING_RATE, context, integer=False),
            freeze=self.parameterAsEnumString(parameters, self.FREEZE, context) or "none",
            prompt_mode=self.parameterAsEnumString(parameters, self.PROMPT_MODE, context) or "none",
            prompt=self.parameterAsString(parameters, self.PROMPT, context) or "",
            precision=self.parameterAsEnumString(parameters, self.PRECISION, context) or "auto",
            device=self.parameterAsString(parameters, self.DEVICE, context) or "auto",
            val_every=self._optional_number(parameters, self.VAL_EVERY, context, integer=True),  # type: ignore[arg-type]
            patience=self._optional_number(parameters, self.PATIENCE, context, integer=True),  # type: ignore[arg-type]
            seed=self.parameterAsInt(parameters, self.SEED, context),
            resume=self.parameterAsBool(parameters, self.RESUME, context))
        if epochs:
            feedback.pushInfo(f"EPOCHS {epochs:g} given: it sets the length (ITERATIONS is not used)")
        try:
            params = build_train_params(choice, BackendConfig.load().weights_dir)
        except ChangeClipPluginError as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo(f"Training {params.variant or '(resumed)'} from {params.init or 'the run'} on "
                          f"{', '.join(params.datasets)} into {params.run_dir}")
        log = JobLog(feedback)
        summary = run_backend_job(params, feedback, log)
        best = summary.get("best") or {}
        weights = (summary.get("outputs") or {}).get("weights")
        if not weights:
            raise QgsProcessingException("ChangeCLIP: the run ended without a validation, so there are no best "
                                         "weights; give more ITERATIONS or a smaller VAL_EVERY")
        if summary.get("status") == "early-stopped":
            feedback.pushInfo(f"Stopped early at iteration {summary.get('iteration')} (PATIENCE)")
        feedback.pushInfo(f"Best: change F1 {_pct(best.get('f1'))}, IoU {_pct(best.get('iou'))} at iteration "
                          f"{best.get('iteration')} -> {weights}")
        return {self.OUTPUT: params.run_dir, self.WEIGHTS: weights, self.BEST_F1: best.get("f1"),
                self.BEST_IOU: best.get("iou"), self.ITERATIONS_DONE: int(summary.get("iteration") or 0)}


def _pct(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{100 * value:.1f} %"

