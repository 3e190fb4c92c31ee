"""Job kinds ``dataset`` and ``train`` through the real HTTP app, with the real dataset maker and trainer.

The NAIP sample pair and two change squares the test writes make a 64 px dataset; a TINY
network trains for a few iterations on one CPU thread (seconds). Detection jobs keep their
scripted runner (``inprocess_server``); the two new kinds run the real code.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from changeclip import protocol
from changeclip.protocol import DatasetParams, TrainParams

from .conftest import LiveServer, ScriptedRunner, wait_for

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[3]
BEFORE = REPO / "resources" / "sample" / "naip_2015.tif"
AFTER = REPO / "resources" / "sample" / "naip_2020.tif"
ORIGIN = (486900.0, 5208495.0)  # top-left of naip_2015.tif, EPSG:26914, 5 m pixels


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Train on one thread: two threads per process on a shared 2-core machine run many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_changes(path: Path) -> Path:
    """Two 60 x 60 m change squares in the NAIP pair's CRS (GeoPackage)."""
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(26914)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("changes", srs, ogr.wkbPolygon)
    x0, y0 = ORIGIN
    for a, b, c, d in ((300, 400, 600, 700), (1500, 900, 1800, 1200)):
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(
            f"POLYGON(({x0 + a} {y0 - b},{x0 + c} {y0 - b},{x0 + c} {y0 - d},{x0 + a} {y0 - d},{x0 + a} {y0 - b}))"))
        layer.CreateFeature(f)
    ds = None
    return path


def make_dataset(server: LiveServer, tmp_path: Path) -> Path:
    """A dataset job on the NAIP pair; returns the dataset folder."""
    changes = write_changes(tmp_path / "changes.gpkg")
    out = tmp_path / "dataset"
    info = server.client.submit(DatasetParams(str(BEFORE), str(AFTER), str(changes), str(out), tile=64, stride=64,
                                              val_fraction=0.3))
    assert info.kind == "dataset" and info.state in ("queued", "running")
    final = server.client.wait(info.job_id, poll_s=0.1, timeout_s=120)
    assert final.state == "succeeded", final.error
    result = server.client.result(info.job_id)
    assert result["outputs"]["dataset"] == str(out) and (out / protocol.DATASET_MANIFEST_NAME).is_file()
    splits = {row["split"]: row for row in result["summary"]["splits"]}
    assert splits["train"]["change_px"] > 0 and splits["val"]["tiles"] > 0
    return out


def train_params(dataset: Path, run: Path, **extra: Any) -> TrainParams:
    base: dict[str, Any] = dict(variant="tiny-vit", init="scratch", iters=6, val_every=3, batch_size=2,
                                accumulate=1, crop=64, workers=0, log_every=1, device="cpu")
    return TrainParams(datasets=[str(dataset)], run_dir=str(run), **{**base, **extra})


def test_dataset_and_training_jobs_share_the_queue_and_report_training_progress(
        inprocess_server: tuple[LiveServer, ScriptedRunner], tmp_path: Path) -> None:
    server, _ = inprocess_server
    dataset = make_dataset(server, tmp_path)
    first = server.client.submit(train_params(dataset, tmp_path / "run1"))
    second = server.client.submit(train_params(dataset, tmp_path / "run2", iters=2, val_every=2))
    # the second training waits behind the first, and says so
    assert second.state == "queued" and second.kind == "train"
    assert "1 job(s) ahead" in second.progress.message and "one job runs at a time" in second.progress.message
    done = server.client.wait(first.job_id, poll_s=0.1, timeout_s=300)
    assert done.state == "succeeded", done.error
    p = done.progress
    assert p.iteration == p.iterations == 6 and p.device == "cpu" and isinstance(p.loss, float)
    assert p.val is not None and p.val["iteration"] == 6 and p.best is not None
    result = server.client.result(first.job_id)["summary"]
    assert result["status"] == "finished" and result["iteration"] == 6
    weights = Path(result["outputs"]["weights"])
    assert weights.name == protocol.RUN_BEST_NAME and weights.is_file()
    # every event, in order, from the events endpoint; then only the newer ones
    events, count = server.client.events(first.job_id)
    assert [e["seq"] for e in events] == list(range(1, count + 1)) and count == p.events
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("step") == 6 and kinds.count("val") == 2
    assert [e["iteration"] for e in events if e["event"] == "val"] == [3, 6]
    assert all({"f1", "iou", "precision", "recall"} <= set(e) for e in events if e["event"] == "val")
    newer, again = server.client.events(first.job_id, since=count - 2)
    assert [e["seq"] for e in newer] == [count - 1, count] and again == count
    later = server.client.wait(second.job_id, poll_s=0.1, timeout_s=300)
    assert later.state == "succeeded" and later.progress.message == ""
    assert (later.started or 0) >= (done.finished or 0)  # one at a time


def test_a_cancelled_training_saves_a_checkpoint_that_a_resume_job_continues(
        inprocess_server: tuple[LiveServer, ScriptedRunner], tmp_path: Path) -> None:
    server, _ = inprocess_server
    dataset = make_dataset(server, tmp_path)
    run = tmp_path / "run"
    params = train_params(dataset, run, iters=12, val_every=6)
    job = server.client.submit(params)
    wait_for(lambda: (server.client.job(job.job_id).progress.iteration or 0) >= 1, 120, "the first iteration")
    server.client.cancel(job.job_id)
    stopped = server.client.wait(job.job_id, poll_s=0.1, timeout_s=120)
    assert stopped.state == "cancelled" and "resumable checkpoint" in (stopped.error or ""), stopped.error
    assert (run / protocol.RUN_STATE_NAME).is_file() and (run / protocol.RUN_LAST_NAME).is_file()
    at = stopped.progress.iteration
    assert at is not None and 1 <= at < 12
    # a new run in the same folder is refused before it is queued; a resume continues where it stopped
    with pytest.raises(Exception, match="not empty"):
        server.client.submit(params)
    resumed = server.client.submit(train_params(dataset, run, iters=12, val_every=6, resume=True))
    final = server.client.wait(resumed.job_id, poll_s=0.1, timeout_s=300)
    assert final.state == "succeeded", final.error
    events, _ = server.client.events(resumed.job_id)
    assert events[0]["event"] == "start" and events[0]["iteration"] == at
    assert server.client.result(resumed.job_id)["summary"]["iteration"] == 12


def _post(server: LiveServer, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(server.url + protocol.PATH_JOBS, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {server.token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - local test server
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(("body", "status", "where"), [
    ({"kind": "fit"}, 422, ["body", "kind"]),
    ({"kind": "train", "datasets": ["/d"], "run_dir": "/r", "variant": "huge", "init": "scratch"}, 422,
     ["body", "variant"]),
    ({"kind": "train", "datasets": ["/d"], "run_dir": "/r", "init": "scratch"}, 422, ["body", "variant"]),
    ({"kind": "train", "datasets": ["/d"], "run_dir": "/r", "variant": "tiny-vit", "init": "nope"}, 422,
     ["body", "init"]),
    ({"kind": "train", "datasets": ["/d"], "run_dir": "/r", "variant": "tiny-vit", "init": "scratch",
      "precision": "int8"}, 422, ["body", "precision"]),  # int8 is for inference only
    ({"kind": "train", "datasets": ["/no/such/dataset"], "run_dir": "/tmp/x", "variant": "tiny-vit",
      "init": "scratch"}, 400, "datasets[0]"),
    ({"kind": "dataset", "before": "/b", "after": "/a", "output_dir": "/o"}, 422, ["body", "changes"]),
    ({"kind": "dataset", "before": str(BEFORE), "after": str(AFTER), "changes": "/no/such.gpkg",
      "output_dir": "/tmp/o"}, 400, "changes"),
    ({"kind": "dataset", "before": str(BEFORE), "after": str(AFTER), "changes": "/c", "output_dir": "/o",
      "stride": 300, "tile": 256}, 422, ["body", "stride"]),
])
def test_bad_dataset_and_training_bodies_are_refused_naming_the_field(
        inprocess_server: tuple[LiveServer, ScriptedRunner], body: dict[str, Any], status: int, where: Any) -> None:
    server, _ = inprocess_server
    code, answer = _post(server, body)
    assert code == status, answer
    if status == 422:
        assert any(item["loc"][: len(where)] == where for item in answer["detail"]), answer
    else:
        assert where in answer["detail"], answer
    assert server.client.jobs() == []


def test_detection_bodies_of_protocol_1_are_still_detections(
        inprocess_server: tuple[LiveServer, ScriptedRunner], tmp_path: Path) -> None:
    server, runner = inprocess_server
    for i, body in enumerate(({}, {"kind": "detect"})):
        code, answer = _post(server, {"before": str(BEFORE), "after": str(AFTER),
                                      "output_dir": str(tmp_path / f"out{i}"), "engine": "irmad", **body})
        assert code == 201 and answer["kind"] == "detect", answer
        final = server.client.wait(answer["job_id"], poll_s=0.05, timeout_s=30)
        assert final.state == "succeeded" and final.kind == "detect"
    assert runner.started == ["out0", "out1"]
    assert server.client.events(answer["job_id"]) == ([], 0)  # a detection reports no events


def test_submit_dataset_and_submit_train_from_the_command_line(tmp_path: Path) -> None:
    """``changeclip submit dataset|train … --wait`` against a real server process, relative paths
    made absolute, training events printed as JSON lines; then ``status`` of the training job."""
    import os
    import subprocess
    import sys

    from .conftest import start_server_process, stop_server_process

    server = start_server_process(tmp_path, env={"OMP_NUM_THREADS": "1"})
    try:
        env = {**os.environ, "CHANGECLIP_BACKEND_URL": server.url,
               "CHANGECLIP_TOKEN_FILE": server.handshake["token_file"]}

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "changeclip", *args], capture_output=True, text=True,
                                  env=env, cwd=tmp_path, timeout=600)

        write_changes(tmp_path / "changes.gpkg")
        made = run("submit", "dataset", str(BEFORE), str(AFTER), "changes.gpkg", "-o", "ds", "--tile", "64",
                   "--stride", "64", "--val-fraction", "0.3", "--wait")
        assert made.returncode == 0, made.stderr
        result = json.loads(made.stdout.strip().splitlines()[-1])
        assert result["outputs"]["dataset"] == str(tmp_path / "ds")
        trained = run("submit", "train", "ds", "-o", "run", "--variant", "tiny-vit", "--init", "scratch",
                      "--iters", "2", "--val-every", "2", "--batch-size", "2", "--crop", "64", "--workers", "0",
                      "--device", "cpu", "--wait", "--json")
        assert trained.returncode == 0, trained.stderr
        lines = [json.loads(line) for line in trained.stdout.strip().splitlines()]
        assert [e["event"] for e in lines if "event" in e and "seq" in e][0] == "start"
        vals = [e for e in lines if e.get("event") == "val"]
        assert len(vals) == 1 and vals[0]["iteration"] == 2 and "f1" in vals[0]
        final = lines[-1]
        assert final["summary"]["outputs"]["weights"] == str(tmp_path / "run" / protocol.RUN_BEST_NAME)
        status = json.loads(run("status", final["job_id"]).stdout)
        assert status["kind"] == "train" and status["state"] == "succeeded"
        assert status["params"]["datasets"] == [str(tmp_path / "ds")]
    finally:
        stop_server_process(server)


def test_a_training_whose_server_is_killed_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """``kill -9`` of the server mid-run (no chance to save anything): the run folder still holds the
    checkpoint of its last validation, complete, and a resume job on a new server finishes the run."""
    import signal

    from .conftest import start_server_process, stop_server_process

    server = start_server_process(tmp_path, env={"OMP_NUM_THREADS": "1"})
    try:
        dataset = make_dataset(server, tmp_path)
        run = tmp_path / "run"
        job = server.client.submit(train_params(dataset, run, iters=12, val_every=3))
        wait_for(lambda: (server.client.job(job.job_id).progress.iteration or 0) >= 4, 300, "iteration 4")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
    finally:
        stop_server_process(server)
    assert (run / protocol.RUN_STATE_NAME).is_file() and (run / protocol.RUN_LAST_NAME).is_file()
    server = start_server_process(tmp_path, env={"OMP_NUM_THREADS": "1"})
    try:
        resumed = server.client.submit(train_params(dataset, run, iters=12, val_every=3, resume=True))
        final = server.client.wait(resumed.job_id, poll_s=0.1, timeout_s=300)
        assert final.state == "succeeded", final.error
        events, _ = server.client.events(resumed.job_id)
        assert events[0]["event"] == "start" and events[0]["iteration"] >= 3 and events[0]["iteration"] % 3 == 0
        assert server.client.result(resumed.job_id)["summary"]["iteration"] == 12
    finally:
        stop_server_process(server)


def test_a_cancelled_dataset_job_leaves_no_folder(inprocess_server: tuple[LiveServer, ScriptedRunner],
                                                  tmp_path: Path) -> None:
    """Cancelled while it cuts tiles (64 px every 8 px: thousands of them), the job stops at its next
    tile and its staging folder is removed: no dataset folder, half or whole, is left."""
    server, _ = inprocess_server
    changes = write_changes(tmp_path / "changes.gpkg")
    out = tmp_path / "dataset"
    job = server.client.submit(DatasetParams(str(BEFORE), str(AFTER), str(changes), str(out), tile=64, stride=8,
                                             val_fraction=0.3))
    def cutting() -> bool:
        info = server.client.job(job.job_id)
        assert info.state in ("queued", "running"), f"the dataset job ended before it could be cancelled: {info}"
        return info.progress.stage == "tiles" and info.progress.done > 0

    wait_for(cutting, 120, "the first tiles")
    server.client.cancel(job.job_id)
    final = server.client.wait(job.job_id, poll_s=0.1, timeout_s=120)
    assert final.state == "cancelled", (final.state, final.error)
    assert "partial dataset folder was removed" in (final.error or "")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".dataset")]


def test_train_params_refuse_int8() -> None:
    """int8 is an inference precision (a quantised graph): a training job refuses it by name, and
    the training choices (CLI, job schema, Processing) come from one list without it."""
    from changeclip.training import config

    params = TrainParams(datasets=["/d"], run_dir="/r", variant="tiny-vit", init="scratch", precision="int8")
    with pytest.raises(protocol.ParamError, match="precision") as info:
        params.validate()
    assert info.value.field == "precision"
    assert "int8" not in protocol.TRAIN_PRECISIONS and config.PRECISIONS == protocol.TRAIN_PRECISIONS
