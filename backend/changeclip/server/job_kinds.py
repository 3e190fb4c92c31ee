"""The runners and path checks of the job kinds ``dataset`` and ``train``.

``detect`` jobs run :func:`changeclip.pipeline.run_detection` (see :mod:`changeclip.server.app`);
the two training-side kinds run the very code of the command line:

* ``dataset``: :func:`changeclip.datasets.from_vectors.make_dataset` (``changeclip dataset
  from-vectors``); a cancel stops it at its next tile and removes the staging folder.
* ``train``: :func:`changeclip.training.train` (``changeclip train``); its events (start, step,
  val, note, checkpoint, end) become the job's events and progress, and a cancel makes the
  trainer save a resumable checkpoint and stop: the job ends ``cancelled`` and its ``error``
  says how to resume.

:func:`preflight_job` checks the paths of a ``dataset`` or ``train`` job before it is queued
(HTTP 400 with the path), as :func:`changeclip.server.preflight.preflight` does for ``detect``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

from changeclip import protocol
from changeclip.errors import JobCancelled
from changeclip.preflight import PreflightError, _checked_path, _creatable, _readable_file, _stat

ProgressFn = Callable[..., None]
CancelFn = Callable[[], bool]


# --- dataset --------------------------------------------------------------------------


def run_dataset(params: protocol.DatasetParams, progress: ProgressFn, is_cancelled: CancelFn) -> dict[str, Any]:
    """Make the dataset folder of ``params``; return the job result (outputs, splits, manifest).

    Raises:
        JobCancelled: cancelled (the staging folder is removed, no dataset is left behind).
        InputError: any bad input (from the dataset maker).
    """
    from changeclip.datasets.from_vectors import make_dataset
    from changeclip.datasets.info import split_rows, summary_json

    def report(stage: str, done: int, total: int) -> None:
        if is_cancelled():
            raise JobCancelled("cancelled; the partial dataset folder was removed")
        progress(stage, done, total)

    manifest = make_dataset(params, progress=report)
    info = summary_json(manifest)
    return {"kind": "dataset", "outputs": {"dataset": str(manifest.root)}, "splits": split_rows(manifest),
            "crs": info["crs"], "gsd_m": manifest.gsd_m, "manifest_sha256": info["manifest_sha256"]}


# --- train ----------------------------------------------------------------------------


class _TrainEvents:
    """Turns trainer events into job progress: stage, iterations done / of the run, the event."""

    def __init__(self, progress: ProgressFn) -> None:
        self.progress = progress
        self.done = 0
        self.total = 0

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if isinstance(event.get("iteration"), int):
            self.done = int(event["iteration"])
        if isinstance(event.get("iters"), int):
            self.total = int(event["iters"])
        stage = "done" if kind == "end" else "training"
        self.progress(stage, self.done, self.total, event)


def run_train(params: protocol.TrainParams, progress: ProgressFn, is_cancelled: CancelFn) -> dict[str, Any]:
    """Train (or resume) the run of ``params``; return the job result.

    The result holds ``status`` (``finished`` or ``early-stopped``), ``iteration``, ``iters``,
    ``best`` and ``last_val`` (metrics), ``notes`` and ``outputs`` (``weights``: the best weights
    file, or ``None`` when no validation ran; ``last``; ``run_dir``; ``metrics``).

    Raises:
        JobCancelled: cancelled; the run folder holds a resumable checkpoint (the message says so).
        InputError, ModelError: bad options, data or start weights (nothing written).
    """
    from changeclip.training import train

    progress("preparing", 0, 0)
    # a copy: the trainer fills a resumed run's datasets, variant and init in, the job keeps what was submitted
    result = train(copy.deepcopy(params), progress_cb=_TrainEvents(progress), cancel_cb=is_cancelled)
    run_dir = result.run_dir
    if result.status == "interrupted":
        raise JobCancelled(f"cancelled at iteration {result.iteration} of {result.iters}; a resumable checkpoint "
                           f"is in {run_dir} (submit the same training with resume true to continue)")
    best = os.path.join(run_dir, protocol.RUN_BEST_NAME)
    outputs = {"weights": best if os.path.isfile(best) else None,
               "last": os.path.join(run_dir, protocol.RUN_LAST_NAME), "run_dir": run_dir,
               "metrics": os.path.join(run_dir, protocol.RUN_METRICS_NAME)}
    return {"kind": "train", **result.to_dict(), "outputs": outputs}


# --- path checks ----------------------------------------------------------------------


def preflight_job(params: protocol.DatasetParams | protocol.TrainParams) -> None:
    """Check the paths of a ``dataset`` or ``train`` job on the server's file system.

    Every path must be absolute; inputs must exist; an existing output is refused unless
    ``overwrite`` (or, for training, ``resume``) is set; a new output folder must be creatable.
    Nothing is created or modified.

    Raises:
        PreflightError: the first path that cannot be used, with what to do about it.
    """
    if isinstance(params, protocol.DatasetParams):
        _readable_file("before", params.before, server=True, raster=True)
        _readable_file("after", params.after, server=True, raster=True)
        _vector("changes", params.changes)
        if params.aoi is not None:
            _vector("aoi", params.aoi)
        _output_folder("output_dir", params.output_dir, params.overwrite, "overwrite")
        return
    for i, folder in enumerate(params.datasets):
        name = f"datasets[{i}]"
        checked = _checked_path(name, folder, server=True)
        st = _stat(name, checked)
        if st is None:
            raise PreflightError(name, folder, "does not exist; give a dataset folder made by 'changeclip dataset'")
        if not os.path.isfile(os.path.join(checked, protocol.DATASET_MANIFEST_NAME)):
            raise PreflightError(name, folder, f"has no {protocol.DATASET_MANIFEST_NAME}; make the dataset with "
                                 "'changeclip dataset from-vectors' or 'from-folder' (a createtrainingdata job)")
    if params.init.startswith(("weights:", "clip:")) and params.init != "clip:openai":
        _readable_file("init", params.init.split(":", 1)[1], server=True, raster=False)
    if params.tagger_weights is not None:
        _readable_file("tagger_weights", params.tagger_weights, server=True, raster=False)
    if params.resume:
        checked = _checked_path("run_dir", params.run_dir, server=True)
        if not os.path.isfile(os.path.join(checked, protocol.RUN_STATE_NAME)):
            raise PreflightError("run_dir", params.run_dir, f"has no {protocol.RUN_STATE_NAME} to resume from; "
                                 "start a new run (resume false)")
        return
    _output_folder("run_dir", params.run_dir, params.overwrite, "overwrite (or resume)")


def _vector(field_name: str, path: str) -> None:
    """A vector source: a file, or a folder (e.g. an ESRI Shapefile folder)."""
    checked = _checked_path(field_name, path, server=True)
    if _stat(field_name, checked) is None:
        raise PreflightError(field_name, path, "does not exist; check the path (it must exist on the machine that "
                             "runs the backend)")
    if not os.access(checked, os.R_OK):
        raise PreflightError(field_name, path, "is not readable by the backend's user")


def _output_folder(field_name: str, path: str, overwrite: bool, option: str) -> None:
    checked = _checked_path(field_name, path, server=True)
    st = _stat(field_name, checked)
    if st is None:
        _creatable(field_name, checked)
        return
    if not os.path.isdir(checked):
        raise PreflightError(field_name, path, "is a file; give a folder")
    if os.listdir(checked) and not overwrite:
        raise PreflightError(field_name, path, f"exists and is not empty; choose another folder or set {option}")
