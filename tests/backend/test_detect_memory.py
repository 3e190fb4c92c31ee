"""Streaming: a 20,000 x 20,000 px pair runs in bounded memory (peak RSS measured in a subprocess).

Linux-only (reads the child's peak RSS, VmHWM, from /proc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from geodata import textured, write_raster

SIZE = 20_000
BLOCK = 1_000
RSS_BOUND_MB = 800
"""Python + numpy + GDAL + the pipeline's buffers (a tile row band of the full width, GDAL's
capped block cache, one batch of tiles) stay well below this; one whole-scene float32 array
alone would be 1,600 MB, and the before/after/probability arrays of a whole-scene design ~6 GB."""

_CHILD = """
import json, resource, sys
from changeclip.pipeline import run_detection
from changeclip.protocol import DetectParams
params = DetectParams(sys.argv[1], sys.argv[2], sys.argv[3], engine="irmad", tile=512, batch_size=4)
summary = run_detection(params)
# VmHWM is the peak RSS of this process image only; ru_maxrss would also count the parent's RSS
# at fork time (Linux folds the pre-exec image's high-water mark into it), i.e. pytest's own memory.
with open("/proc/self/status") as fh:
    peak_mb = [int(line.split()[1]) for line in fh if line.startswith("VmHWM:")][0] / 1024.0
print(json.dumps({"peak_rss_mb": peak_mb, "summary": summary,
                  "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
"""


def _tiled_vrt(path: Path, source: str, size: int, block: int, bands: int = 3) -> str:
    """A VRT of ``size`` x ``size`` px made of one small source repeated (cheap to read)."""
    n = size // block
    parts = [f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}">',
             '<SRS dataAxisToSRSAxisMapping="1,2">EPSG:32633</SRS>',
             "<GeoTransform>400000.0, 1.0, 0.0, 5700000.0, 0.0, -1.0</GeoTransform>"]
    for b in range(1, bands + 1):
        parts.append(f'<VRTRasterBand dataType="Byte" band="{b}">')
        for i in range(n):
            for j in range(n):
                parts.append(
                    f'<SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename>'
                    f"<SourceBand>{b}</SourceBand>"
                    f'<SrcRect xOff="0" yOff="0" xSize="{block}" ySize="{block}"/>'
                    f'<DstRect xOff="{j * block}" yOff="{i * block}" xSize="{block}" ySize="{block}"/></SimpleSource>')
        parts.append("</VRTRasterBand>")
    parts.append("</VRTDataset>")
    path.write_text("".join(parts))
    return str(path)


@pytest.mark.slow
def test_20k_pair_runs_in_bounded_memory(tmp_path: Path) -> None:
    before = textured(BLOCK, BLOCK, seed=3)
    after = np.clip(before.astype(np.int16) + 5, 0, 255).astype(np.uint8)
    after[:, 400:600, 400:600] = textured(200, 200, seed=9)  # 4 % of every block changes
    src_b = write_raster(tmp_path / "b_src.tif", before)
    src_a = write_raster(tmp_path / "a_src.tif", after)
    vrt_b = _tiled_vrt(tmp_path / "before.vrt", src_b, SIZE, BLOCK)
    vrt_a = _tiled_vrt(tmp_path / "after.vrt", src_a, SIZE, BLOCK)
    out = tmp_path / "out"
    env = dict(os.environ, GDAL_CACHEMAX="64")
    proc = subprocess.run([sys.executable, "-c", _CHILD, vrt_b, vrt_a, str(out)], capture_output=True, text=True,
                          env=env, timeout=1500, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = result["summary"]
    print(f"\n[detect] 20k x 20k irmad: peak RSS {result['peak_rss_mb']:.0f} MB (VmHWM; ru_maxrss "
          f"{result['ru_maxrss_mb']:.0f} MB includes the forking parent), "
          f"timings {summary['timings_s']}")
    assert summary["grid"]["width"] == SIZE and summary["grid"]["height"] == SIZE
    assert summary["valid_pixels"] == SIZE * SIZE
    assert 0.03 < summary["changed_fraction"] < 0.06
    assert result["peak_rss_mb"] < RSS_BOUND_MB
