"""The ``changeclip`` Processing provider.

It always loads, even without a backend: the toolbox then shows what is missing
(:meth:`warningMessage`) and the algorithm's :meth:`canExecute` explains it instead of running.
"""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..core.backend_launcher import configuration_problem
from ..core.log import log
from ..core.paths import icon_path


class ChangeClipProvider(QgsProcessingProvider):
    """Provider id ``changeclip``: change detection, training data and training."""

    def id(self) -> str:  # noqa: D102
        return "changeclip"

    def name(self) -> str:  # noqa: D102
        return "ChangeCLIP"

    def longName(self) -> str:  # noqa: D102
        return "ChangeCLIP change detection"

    def icon(self) -> QIcon:  # noqa: D102
        return QIcon(str(icon_path()))

    def svgIconPath(self) -> str:  # noqa: D102
        return str(icon_path())

    def warningMessage(self) -> str:  # noqa: D102
        return configuration_problem() or ""

    def supportsNonFileBasedOutput(self) -> bool:  # noqa: D102 - the backend writes files
        return False

    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # noqa: D102
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self) -> list[str]:  # noqa: D102
        return ["gpkg"]

    def defaultRasterFileExtension(self) -> str:  # noqa: D102
        return "tif"

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:  # noqa: D102, N803
        return "gpkg"

    def loadAlgorithms(self) -> None:  # noqa: D102
        try:
            from .detect_changes import DetectChangesAlgorithm, protect_inputs_under_qgis_process
        except Exception as exc:  # noqa: BLE001 - never fail to load the provider
            log(f"the ChangeCLIP algorithm could not be loaded: {exc}", "critical")
            return
        self.addAlgorithm(DetectChangesAlgorithm())
        protect_inputs_under_qgis_process()  # before qgis_process opens the input files
        try:
            from .create_training_data import CreateTrainingDataAlgorithm
            from .train_model import TrainModelAlgorithm
        except Exception as exc:  # noqa: BLE001 - never fail to load the provider
            log(f"the ChangeCLIP training algorithms could not be loaded: {exc}", "critical")
            return
        self.addAlgorithm(CreateTrainingDataAlgorithm())
        self.addAlgorithm(TrainModelAlgorithm())
