"""Change-detection engines: ``changeclip`` (the network) and ``irmad`` (unsupervised baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from changeclip.engines.base import ChangeEngine
from changeclip.engines.irmad import IRMADEngine

if TYPE_CHECKING:
    from changeclip.inference.cache import ModelCache
    from changeclip.protocol import DetectParams

__all__ = ["ChangeEngine", "IRMADEngine", "build_engine"]


def build_engine(params: DetectParams, cache: ModelCache | None = None) -> ChangeEngine:
    """The engine ``params.engine`` names, ready to :meth:`~ChangeEngine.fit` and predict.

    Args:
        params: The job's parameters (engine, weights, variant, device, prompts...).
        cache: Shared model cache (the server passes one; the CLI none).

    Raises:
        ModelError: changeclip weights missing, unreadable or of another model.
        InputError: A device that does not exist.
    """
    if params.engine == "irmad":
        return IRMADEngine()
    if params.engine == "changeclip":
        from changeclip.engines.changeclip_engine import ChangeCLIPEngine  # torch only when needed

        return ChangeCLIPEngine(params, cache)
    raise ValueError(f"unknown engine {params.engine!r}")
