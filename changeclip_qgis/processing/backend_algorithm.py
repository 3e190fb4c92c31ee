"""What every ChangeCLIP Processing algorithm shares: it runs as a backend job.

:class:`BackendAlgorithm` holds the identity and gating the algorithms have in common (the plugin
icon, the toolbox group, a cancellable job, no run without a configured backend); each algorithm
keeps its own ``name()``, ``displayName()``, help, tags and parameters.
"""

from __future__ import annotations

from typing import Any, ClassVar

from qgis.core import QgsProcessingAlgorithm
from qgis.PyQt.QtGui import QIcon

from ..compat import ALGORITHM_CAN_CANCEL, ALGORITHM_SUPPORTS_BATCH
from ..core.backend_launcher import configuration_problem
from ..core.paths import icon_path


class BackendAlgorithm(QgsProcessingAlgorithm):
    """Base of the ``changeclip`` algorithms: a cancellable backend job in a toolbox group.

    Attributes:
        group_name: the toolbox group the algorithm is listed under (``group()``).
        group_id: that group's id (``groupId()``).
        supports_batch: whether the algorithm offers Processing's batch mode.
    """

    group_name: ClassVar[str]
    group_id: ClassVar[str]
    supports_batch: ClassVar[bool] = True

    def group(self) -> str:  # noqa: D102
        return self.group_name

    def groupId(self) -> str:  # noqa: D102
        return self.group_id

    def icon(self) -> QIcon:  # noqa: D102
        return QIcon(str(icon_path()))

    def createInstance(self) -> QgsProcessingAlgorithm:  # noqa: D102
        return type(self)()

    def flags(self) -> Any:  # noqa: D102 - the flags type is QGIS-version specific (see compat)
        flags = super().flags() | ALGORITHM_CAN_CANCEL
        return flags | ALGORITHM_SUPPORTS_BATCH if self.supports_batch else flags

    def canExecute(self) -> tuple[bool, str]:
        """Refuse to run, saying why, while the backend is not configured (the provider still loads)."""
        problem = configuration_problem()
        return (problem is None, problem or "")
