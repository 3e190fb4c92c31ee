"""Touch a job's input rasters in a child process before the server reads them itself.

A read that never returns (a VRT whose source is a FIFO, a hung network share) blocks inside
GDAL, and GDAL then holds its global lock: every later job of the server would hang on it too,
and neither cancelling nor shutting down could end it. So before a job's first read in the
server process, a short-lived child process opens each input and reads a small decimated view
of its bands (every source of a VRT mosaic is touched). The server waits for it while polling
the job's cancellation flag: cancelling (or shutting down) kills the child, and the job ends
``cancelled`` at once. Whatever else the child meets (not a raster, a band that does not
exist) is left to the pipeline, which reports it in its own words.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess  # nosec B404 - runs this interpreter on a fixed script, no shell
import sys
import time
from collections.abc import Callable

from changeclip.errors import JobCancelled
from changeclip.protocol import DetectParams

log = logging.getLogger(__name__)

_SCRIPT = """
import json, os, sys
if sys.platform.startswith("linux"):  # die with the server, even on kill -9 (PR_SET_PDEATHSIG, SIGKILL)
    import ctypes
    ctypes.CDLL(None).prctl(1, 9)
if os.getppid() != int(sys.argv[2]):  # the server died before the line above took effect
    sys.exit(1)
from osgeo import gdal
gdal.UseExceptions()
for path, bands in json.loads(sys.argv[1]):
    ds = gdal.Open(path)
    if ds is None:
        continue
    usable = [b for b in bands if 1 <= b <= ds.RasterCount]
    if usable:
        ds.ReadRaster(0, 0, ds.RasterXSize, ds.RasterYSize, min(16, ds.RasterXSize), min(16, ds.RasterYSize),
                      band_list=usable)
"""


def probe_inputs(params: DetectParams, is_cancelled: Callable[[], bool], poll_s: float = 0.05) -> None:
    """Open and sample ``params.before`` and ``params.after`` in a child process, cancellably.

    Args:
        params: the job.
        is_cancelled: polled while the child runs; True kills it.
        poll_s: seconds between polls.

    Raises:
        JobCancelled: the job was cancelled while its inputs were being opened (the child was
            killed; nothing was read in the server process, nothing written).
    """
    jobs = json.dumps([[params.before, params.bands], [params.after, params.bands]])
    # Justification: this interpreter, a constant script, the paths as one JSON argument; no shell.
    child = subprocess.Popen([sys.executable, "-c", _SCRIPT, jobs, str(os.getpid())],  # nosec B603
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    try:
        while child.poll() is None:
            if is_cancelled():
                raise JobCancelled(f"the job was cancelled while its inputs were being opened (still not "
                                   f"readable after {time.monotonic() - started:.0f} s: is one of them, or a "
                                   "source of a VRT, a FIFO or on a hung network share?); nothing was written")
            time.sleep(poll_s)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    log.debug("inputs probed in %.2f s (child exit %s)", time.monotonic() - started, child.returncode)
