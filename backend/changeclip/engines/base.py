"""The interface every change-detection engine implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from changeclip.weights.training_data import TrainingData


@runtime_checkable
class ChangeEngine(Protocol):
    """A change detector the tiled pipeline can drive.

    Attributes:
        name: Engine id (one of ``protocol.ENGINES``), stated in the summary and the log.
        default_threshold: Probability above which a pixel is change when the user gives none.
        clip_input: Whether inputs are clipped to 0..255 after scaling (networks: yes; IR-MAD,
            a linear statistic, keeps values outside the range).
        needs_context: True when a pixel's result depends on its neighbours (tiles overlap and
            blend); False for pixelwise engines.
        device: Where it runs (``"cpu"``, ``"cuda:0"``).
        training_data: What the engine's weights say of their training imagery (dataset,
            ground sampling distance); the pipeline warns when the scene's pixels are far from
            it. None for engines without training data (IR-MAD) or weights that do not say.
    """

    name: str
    default_threshold: float
    clip_input: bool
    needs_context: bool
    device: str
    training_data: TrainingData | None

    def fit(self, before_sample: np.ndarray, after_sample: np.ndarray) -> None:
        """Global fit on pixels valid in both dates.

        Args:
            before_sample, after_sample: ``(P, C)`` float32, scaled like the tiles (0..255 units).
        """

    def predict_proba(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Change probability of a batch of tiles.

        Args:
            before, after: ``(N, C, H, W)`` float32 in 0..255 units; invalid pixels hold a
                neutral fill value identical in both dates.
            valid: ``(N, H, W)`` bool, True where both dates are valid.

        Returns:
            ``(N, H, W)`` float32 in 0..1 (values at invalid pixels are ignored).
        """
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description for ``summary.json`` (``model`` key)."""
        ...
