"""Reader threads that read the next tile batch ahead: same outputs as serial reads, clean cancel/errors."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from geodata import change_pair, detect_small, write_raster
from osgeo import gdal

from changeclip import pipeline
from changeclip.errors import JobCancelled
from changeclip.pipeline import run_detection
from changeclip.prefetch import BatchReader
from changeclip.protocol import DetectParams


def _run(monkeypatch: pytest.MonkeyPatch, threads: int, out: Path, before: str, after: str,
         **kw: object) -> tuple[dict, np.ndarray, np.ndarray]:
    monkeypatch.setattr(pipeline, "PREFETCH_THREADS", threads)
    return detect_small(out, before, after, **kw)


def _pair_with_nodata_and_warp(tmp_path: Path) -> tuple[str, str]:
    """Before on the grid with a nodata strip; after in another CRS (read through a warped VRT)."""
    b, a, _ = change_pair(tmp_path, h=150, w=170)
    img = gdal.Open(b).ReadAsArray()
    img[:, :, :70] = 0
    b = write_raster(tmp_path / "b_nodata.tif", img, nodata=0)
    geo = tmp_path / "after_4326.tif"
    gdal.Warp(str(geo), a, dstSRS="EPSG:4326").FlushCache()
    return b, str(geo)


def test_prefetch_outputs_equal_serial_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b, a = _pair_with_nodata_and_warp(tmp_path)
    s0, mask0, prob0 = _run(monkeypatch, 0, tmp_path / "serial", b, a)
    s3, mask3, prob3 = _run(monkeypatch, 3, tmp_path / "threads", b, a)
    assert s0["inputs"]["warped"]["after"] and s0["tiles"]["skipped_nodata"] >= 1
    assert s0["tiles"]["total"] > 2 * 3, "several batches, so reads really run ahead"
    assert np.array_equal(mask0, mask3)
    assert prob0.dtype == np.float32 and np.array_equal(prob0, prob3, equal_nan=True)
    assert s0["changed_pixels"] == s3["changed_pixels"] and s0["valid_pixels"] == s3["valid_pixels"]


def test_prefetch_equals_serial_with_network_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    tiny_weights) -> None:
    """The network engine uses context (edge margin, reflect padding, overlapping tiles)."""
    b, a, _ = change_pair(tmp_path, h=96, w=128)
    kw = {"engine": "changeclip", "weights": str(tiny_weights("tiny-rn50")), "prompt_mode": "none",
          "device": "cpu", "tile": 64, "overlap": 16, "batch_size": 2}
    _, mask0, prob0 = _run(monkeypatch, 0, tmp_path / "serial", b, a, **kw)
    _, mask2, prob2 = _run(monkeypatch, 2, tmp_path / "threads", b, a, **kw)
    assert np.array_equal(mask0, mask2) and np.array_equal(prob0, prob2, equal_nan=True)


def test_cancel_with_prefetch_stops_within_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b, a, _ = change_pair(tmp_path, h=300, w=300)
    monkeypatch.setattr(pipeline, "PREFETCH_THREADS", 2)
    tiles_seen: list[int] = []
    polls = {"n": 0}

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "tiles":
            tiles_seen.append(done)

    def is_cancelled() -> bool:
        polls["n"] += 1
        return bool(tiles_seen) and tiles_seen[-1] >= 2

    params = DetectParams(b, a, str(tmp_path / "o"), engine="irmad", tile=64, overlap=0, batch_size=2)
    with pytest.raises(JobCancelled):
        run_detection(params, progress=progress, is_cancelled=is_cancelled)
    assert max(tiles_seen) == 2, "the run stopped at the first batch boundary after the cancel"
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert not [t for t in threading.enumerate() if t.name.startswith("changeclip-read")], "reader threads ended"


class _Source:
    """A stand-in TileSource that records which thread read which tile, and fails on request."""

    def __init__(self, fail_at: tuple[int, int] | None = None) -> None:
        self.reads: list[tuple[tuple[int, int], str]] = []
        self.fail_at = fail_at
        self.closed = False
        self._lock = threading.Lock()

    def read(self, x0: int, y0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if (x0, y0) == self.fail_at:
            raise RuntimeError("truncated file")
        with self._lock:
            self.reads.append(((x0, y0), threading.current_thread().name))
        z = np.full((1, 2, 2), x0 + 10 * y0, dtype=np.float32)
        return z, z, np.ones((2, 2), dtype=bool)

    def close(self) -> None:
        self.closed = True


def test_batch_reader_order_lookahead_and_errors() -> None:
    batches = [[(i, j) for i in range(3)] for j in range(4)]
    src = _Source()
    with BatchReader(src, batches, threads=2) as reader:  # type: ignore[arg-type]
        first = reader.get(0)
        assert first.positions == batches[0] and first.skipped == 0
        assert first.before is not None and first.before.shape == (3, 1, 2, 2)
        assert first.before[:, 0, 0, 0].tolist() == [x + 10 * y for x, y in batches[0]]
        reader._pending[1][1][-1].result()  # batch 1 was started while batch 0 was handed out
        assert len(reader._pending) == 1 and 2 not in reader._pending, "at most one batch read ahead"
        assert all(name.startswith("changeclip-read") for _, name in src.reads)
    assert src.closed
    bad = _Source(fail_at=(1, 2))
    with pytest.raises(RuntimeError, match="truncated"), BatchReader(bad, batches, threads=2) as reader:  # type: ignore[arg-type]
        for i in range(len(batches)):
            reader.get(i)
    assert bad.closed and all(pos[1] <= 3 for pos, _ in bad.reads)


@pytest.mark.parametrize("threads", [0, 2])
def test_batch_keeps_only_tiles_with_valid_pixels(threads: int) -> None:
    class Sparse(_Source):
        def read(self, x0: int, y0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
            return None if x0 % 2 else super().read(x0, y0)  # odd columns: all nodata

    with BatchReader(Sparse(), [[(i, 0) for i in range(5)], [(1, 1), (3, 1)]], threads) as reader:  # type: ignore[arg-type]
        batch = reader.get(0)
        assert batch.positions == [(0, 0), (2, 0), (4, 0)] and batch.skipped == 2
        assert batch.before is not None and batch.valid is not None
        assert batch.before[:, 0, 0, 0].tolist() == [0.0, 2.0, 4.0] and batch.valid.shape == (3, 2, 2)
        empty = reader.get(1)
        assert (empty.positions, empty.before, empty.skipped) == ([], None, 2)


def test_serial_batch_reader_reads_on_the_calling_thread() -> None:
    src = _Source()
    with BatchReader(src, [[(0, 0), (1, 0)]], threads=0) as reader:  # type: ignore[arg-type]
        assert reader.get(0).positions == [(0, 0), (1, 0)]
    assert {name for _, name in src.reads} == {threading.current_thread().name}

