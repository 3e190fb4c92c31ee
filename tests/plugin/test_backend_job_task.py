"""How the background tasks record a run that stops: :class:`BackendJobTask` and its two tasks.

The backend here is a real launcher pointed at an interpreter that does not exist, so ``ensure``
raises the real :class:`BackendUnavailable`; ``run()`` is called on the test thread.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis


@pytest.fixture()
def missing_backend(tmp_path: Path):  # noqa: ANN201
    from changeclip_qgis.core.backend_launcher import BackendLauncher
    from changeclip_qgis.core.settings import BackendConfig

    config = BackendConfig(python=str(tmp_path / "missing" / "python"), url="", token_file="", weights_dir="")
    return BackendLauncher(), config


def _tasks(tmp_path: Path, missing_backend: tuple) -> list:  # noqa: ANN201
    from changeclip_qgis.core import protocol
    from changeclip_qgis.tasks.detect_task import DetectTask
    from changeclip_qgis.tasks.train_task import TrainTask

    launcher, config = missing_backend
    detect = DetectTask(protocol.DetectParams(str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), str(tmp_path / "out")),
                        "run", launcher=launcher, config=config, load_layers=False)
    train = TrainTask(None, protocol.TrainParams([str(tmp_path / "data")], str(tmp_path / "run")),
                      launcher=launcher, config=config)
    return [detect, train]


def test_an_unavailable_backend_is_recorded_as_such(qgis_app: object, tmp_path: Path,
                                                    missing_backend: tuple) -> None:
    for task in _tasks(tmp_path, missing_backend):
        assert task.run() is False, type(task).__name__
        assert task.backend_unavailable and not task.cancelled_by_user
        assert task.error and "missing" in task.error, task.error


def test_a_cancel_stops_the_export_feedback_and_is_recorded(qgis_app: object, tmp_path: Path,
                                                            missing_backend: tuple) -> None:
    detect, train = _tasks(tmp_path, missing_backend)
    for task in (detect, train):
        task.cancel()
        assert task._feedback.isCanceled()  # a running layer export would stop too
    # The dock's task reports a cancel as success (QGIS would otherwise announce "Task failed").
    assert detect.run() is True and detect.cancelled_by_user
    # The Train page's task stops before training starts and says so.
    assert train.run() is False and train.cancelled_by_user
    assert train.error == "cancelled before training started"
    assert not train.backend_unavailable


def test_unexpected_errors_are_worded_by_the_task(qgis_app: object, tmp_path: Path, missing_backend: tuple) -> None:
    detect, train = _tasks(tmp_path, missing_backend)
    assert detect._unexpected_error(ValueError("x")) == "unexpected error: ValueError('x')"
    assert train._unexpected_error(ValueError("too few steps")) == "could not measure the speed: too few steps"
    assert train._unexpected_error(KeyError("k")) == "unexpected error: KeyError('k')"
