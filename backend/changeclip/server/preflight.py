"""File checks of a submitted job, done before it is queued (HTTP 400 with the path).

The checks themselves are :mod:`changeclip.preflight`, shared with the pipeline; the server
applies its stricter rules (absolute paths only, weights files must exist). Nothing is
created or modified.
"""

from __future__ import annotations

from changeclip.preflight import PreflightError
from changeclip.preflight import preflight as _preflight
from changeclip.protocol import DetectParams

__all__ = ["PreflightError", "preflight"]


def preflight(params: DetectParams) -> None:
    """Check every path of ``params`` against the server's file system.

    Args:
        params: validated job parameters.

    Raises:
        PreflightError: the first path that cannot be used, with what to do about it.
    """
    _preflight(params, server=True)
