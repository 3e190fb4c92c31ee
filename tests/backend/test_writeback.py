"""The writer thread: in-order work, bounded queue, errors raised in the caller; pipeline outputs unchanged."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from geodata import change_pair, detect_small

from changeclip import pipeline
from changeclip.errors import InputError, JobCancelled
from changeclip.pipeline import run_detection
from changeclip.protocol import DetectParams
from changeclip.raster import outputs
from changeclip.writeback import Writeback


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "changeclip-write"]


@pytest.mark.parametrize("threaded", [True, False])
def test_work_runs_in_order_on_one_thread(threaded: bool) -> None:
    done: list[tuple[int, str]] = []
    with Writeback(lambda i: done.append((i, threading.current_thread().name)), threaded=threaded) as back:
        for i in range(50):
            back.put(i)
        back.finish()
    assert [i for i, _ in done] == list(range(50))
    names = {name for _, name in done}
    assert names == ({"changeclip-write"} if threaded else {threading.current_thread().name})
    assert not _writer_threads()


def test_put_blocks_while_the_queue_is_full() -> None:
    gate = threading.Event()
    started: list[int] = []

    def work(i: int) -> None:
        started.append(i)
        gate.wait(5)

    back: Writeback[int] = Writeback(work, depth=2)
    for i in range(3):  # one in work, two queued
        back.put(i)
    putter = threading.Thread(target=back.put, args=(3,))
    putter.start()
    time.sleep(0.2)
    assert putter.is_alive(), "a fourth item waits for room: memory stays bounded"
    gate.set()
    putter.join(5)
    back.finish()
    assert started == [0, 1, 2, 3]


def test_error_in_the_writer_is_raised_in_the_caller() -> None:
    def work(i: int) -> None:
        if i == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    back: Writeback[int] = Writeback(work)
    with pytest.raises(OSError, match="No space"), back:
        for i in range(100):
            back.put(i)
            time.sleep(0.001)
        back.finish()
    assert not _writer_threads()


def test_leaving_early_drops_the_queued_items() -> None:
    gate, busy = threading.Event(), threading.Event()
    done: list[int] = []

    def work(i: int) -> None:
        busy.set()
        gate.wait(5)
        done.append(i)

    with pytest.raises(JobCancelled), Writeback(work, depth=4) as back:
        back.put(0)
        assert busy.wait(5)
        for i in range(1, 4):  # item 0 waits in work, items 1-3 in the queue
            back.put(i)
        threading.Timer(0.2, gate.set).start()  # item 0 finishes after the block was left
        raise JobCancelled("cancelled")
    assert done == [0] and not _writer_threads()


def _run(monkeypatch: pytest.MonkeyPatch, threaded: bool, out: Path, before: str, after: str,
         **kw: object) -> tuple[dict, np.ndarray, np.ndarray]:
    monkeypatch.setattr(pipeline, "WRITE_THREAD", threaded)
    return detect_small(out, before, after, **kw)


def test_pipeline_outputs_equal_with_and_without_the_writer_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    tiny_weights) -> None:  # noqa: ANN001
    b, a, _ = change_pair(tmp_path, h=150, w=170)
    kw = {"engine": "changeclip", "weights": str(tiny_weights("tiny-rn50")), "prompt_mode": "none",
          "device": "cpu", "tile": 64, "overlap": 16, "batch_size": 2}
    s0, mask0, prob0 = _run(monkeypatch, False, tmp_path / "serial", b, a, **kw)
    s1, mask1, prob1 = _run(monkeypatch, True, tmp_path / "thread", b, a, **kw)
    assert s0["tiles"]["total"] > 6, "several batches, so writing really overlaps compute"
    assert np.array_equal(mask0, mask1) and np.array_equal(prob0, prob1, equal_nan=True)
    assert (s0["changed_pixels"], s0["valid_pixels"], s0["changed_area_m2"]) == (
        s1["changed_pixels"], s1["valid_pixels"], s1["changed_area_m2"])


def test_disk_full_in_the_writer_thread_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b, a, _ = change_pair(tmp_path, h=300, w=300)
    real = outputs.BlockRasterWriter.write
    writers: set[str] = set()

    def full(self: outputs.BlockRasterWriter, array: np.ndarray, xoff: int, yoff: int) -> None:
        writers.add(threading.current_thread().name)
        if yoff > 64:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, array, xoff, yoff)

    monkeypatch.setattr(outputs.BlockRasterWriter, "write", full)
    monkeypatch.setattr(pipeline, "WRITE_THREAD", True)
    with pytest.raises(InputError, match="disk is full"):
        run_detection(DetectParams(b, a, str(tmp_path / "o"), engine="irmad", tile=64, overlap=0, batch_size=2))
    assert writers == {"changeclip-write"} and not (tmp_path / "o").exists()
    assert not _writer_threads()
