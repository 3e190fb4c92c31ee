"""``changeclip submit`` / ``status`` / ``cancel``: talk to a running ``changeclip serve``.

``changeclip submit train …`` and ``changeclip submit dataset …`` (also spelt ``submit-train`` and
``submit-dataset``) queue a training (the options of ``changeclip train``) or a training-data
folder (those of ``changeclip dataset from-vectors``) on the same queue.

The server is found by ``--url`` and ``--token-file`` (defaults: the environment
variables ``CHANGECLIP_BACKEND_URL`` and ``CHANGECLIP_TOKEN_FILE``; both are in the server's
handshake line). Each command prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any

from changeclip import protocol
from changeclip.errors import ChangeClipError, InputError, JobCancelled

log = logging.getLogger(__name__)

ENV_URL = "CHANGECLIP_BACKEND_URL"
ENV_TOKEN_FILE = "CHANGECLIP_TOKEN_FILE"
EXIT_STILL_RUNNING = 4
"""Exit status of ``submit --wait`` / ``cancel --wait`` that stopped waiting (Ctrl-C or
``--timeout``) while the job goes on on the server."""
_PATH_FIELDS = ("before", "after", "output_dir", "weights", "tagger_weights", "mask_path", "probability_path",
                "polygons_path")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``submit``, ``status`` and ``cancel``."""
    from changeclip.commands import detect

    p = subparsers.add_parser("submit", help="queue a detection job on a running server",
                              description="Queue a detection job on a running 'changeclip serve', with the options "
                                          "of 'changeclip detect'. Prints the job as JSON; with --wait, waits for "
                                          "it (progress on stderr) and prints the result.")
    detect.add_arguments(p)
    _server_options(p)
    p.add_argument("--wait", action="store_true", help="wait for the job; exit 0 if it succeeded, 1 if it "
                                                      "failed or was lost, 130 if it was cancelled, "
                                                      f"{EXIT_STILL_RUNNING} if waiting stopped (Ctrl-C, "
                                                      "--timeout) while the job runs on")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="with --wait: stop waiting after S seconds (the job runs on; exit "
                        f"{EXIT_STILL_RUNNING})")
    p.add_argument("--cancel-on-interrupt", action="store_true",
                   help="with --wait: Ctrl-C cancels the job (exit 130) instead of leaving it running")
    p.add_argument("--json", action="store_true",
                   help="with --wait: progress as JSON lines on stdout (like 'changeclip detect --json')")
    p.set_defaults(func=run_submit)

    _register_submit_kinds(subparsers)

    p = subparsers.add_parser("status", help="server status, or one job's state and progress",
                              description="Without JOB: the server's version, devices, loaded models and "
                                          "queues. With JOB: that job's state and progress.")
    _server_options(p)
    p.add_argument("job_id", nargs="?", metavar="JOB", help="job id printed by 'changeclip submit'")
    p.add_argument("--jobs", action="store_true", help="list every job the server remembers")
    p.set_defaults(func=run_status)

    p = subparsers.add_parser("cancel", help="cancel a queued or running job",
                              description="Cancel a job: a queued job at once, a running one at its next batch; "
                                          "its partial outputs are removed.")
    _server_options(p)
    p.add_argument("job_id", metavar="JOB", help="job id printed by 'changeclip submit'")
    p.add_argument("--wait", action="store_true", help="wait until the job has stopped")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help=f"with --wait: stop waiting after S seconds (exit {EXIT_STILL_RUNNING} if the job "
                        "has not stopped by then)")
    p.set_defaults(func=run_cancel)


SUBMIT_KINDS = {"train": "submit-train", "dataset": "submit-dataset"}
"""``changeclip submit KIND …`` is read as the command ``submit-KIND …``."""


def route_submit_kind(argv: list[str]) -> list[str]:
    """``[..., 'submit', 'train', ...]`` -> ``[..., 'submit-train', ...]`` (same for ``dataset``)."""
    for i, word in enumerate(argv):
        if word.startswith("-"):
            continue
        if word == "submit" and i + 1 < len(argv) and argv[i + 1] in SUBMIT_KINDS:
            return [*argv[:i], SUBMIT_KINDS[argv[i + 1]], *argv[i + 2:]]
        return argv
    return argv


class _Named:
    """Subparsers whose next ``add_parser`` gets another name (to reuse a command's own parser)."""

    def __init__(self, subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
        self.subparsers, self.name, self.help_text = subparsers, name, help_text
        self.parser: argparse.ArgumentParser | None = None

    def add_parser(self, _name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs["help"] = self.help_text
        self.parser = self.subparsers.add_parser(self.name, **kwargs)
        return self.parser


def _register_submit_kinds(subparsers: argparse._SubParsersAction) -> None:
    from changeclip.commands import dataset, train

    named = _Named(subparsers, "submit-train", "queue a training on a running server (also: submit train); "
                                               "the options of 'changeclip train'")
    train.register(named)  # type: ignore[arg-type]
    assert named.parser is not None
    _submit_tail(named.parser, run_submit_train)
    named = _Named(subparsers, "submit-dataset", "queue 'dataset from-vectors' on a running server (also: "
                                                 "submit dataset)")
    dataset._register_from_vectors(named)  # type: ignore[arg-type]
    assert named.parser is not None
    _submit_tail(named.parser, run_submit_dataset)


def _submit_tail(p: argparse.ArgumentParser, func: Any) -> None:
    _server_options(p)
    p.add_argument("--wait", action="store_true", help="wait for the job; exit 0 if it succeeded, 1 if it "
                                                      "failed, 130 if it was cancelled")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="with --wait: give up after S seconds")
    if not any(a.dest == "json" for a in p._actions):
        p.add_argument("--json", action="store_true", help="with --wait: progress as JSON lines on stdout")
    p.set_defaults(func=func)


def _absolute(path: str | None) -> str | None:
    return os.path.abspath(os.path.expanduser(path)) if path else path


def train_params_from_args(args: argparse.Namespace) -> protocol.TrainParams:
    """The :class:`protocol.TrainParams` of ``submit train``'s arguments (local paths made absolute).

    Raises:
        InputError: an invalid option (names it).
    """
    from changeclip.commands import train

    config = train.config_from_args(args).to_dict()
    config.pop("extra", None)
    config["datasets"] = [_absolute(d) for d in config["datasets"]]
    config["run_dir"] = _absolute(config["run_dir"])
    config["tagger_weights"] = _absolute(config["tagger_weights"])
    init = config["init"] or ""
    if init.startswith(("weights:", "clip:")) and init != "clip:openai":
        kind, path = init.split(":", 1)
        config["init"] = f"{kind}:{_absolute(path)}"
    try:
        return protocol.TrainParams.from_dict(config)
    except protocol.ParamError as exc:
        raise InputError(f"--{exc.field.replace('_', '-')}: {exc.message}") from None


def dataset_params_from_args(args: argparse.Namespace) -> protocol.DatasetParams:
    """The :class:`protocol.DatasetParams` of ``submit dataset``'s arguments (local paths made absolute).

    Raises:
        InputError: an invalid option (names it).
    """
    from changeclip.commands import dataset

    params = dataset.vectors_params(args, _absolute)
    try:
        params.validate()
    except protocol.ParamError as exc:
        raise InputError(f"--{exc.field.replace('_', '-')}: {exc.message}") from None
    return params


def run_submit_train(args: argparse.Namespace) -> int:
    """Queue a training; optionally wait for it, printing its events."""
    return _submit_and_wait(args, train_params_from_args(args))


def run_submit_dataset(args: argparse.Namespace) -> int:
    """Queue a training-data folder; optionally wait for it."""
    return _submit_and_wait(args, dataset_params_from_args(args))


def _submit_and_wait(args: argparse.Namespace, params: protocol.JobParams) -> int:
    client = _client(args)
    info = client.submit(params)
    if not args.wait:
        _print(info)
        return 0
    log.info("job %s (%s) queued on %s%s", info.job_id, info.kind, info.device,
             f": {info.progress.message}" if info.progress.message else "")
    seen = 0

    def on_progress(current: protocol.JobInfo) -> None:
        nonlocal seen
        if current.progress.events > seen:
            events, seen = client.events(current.job_id, seen)
            for event in events:
                if args.json:
                    _print({"job_id": current.job_id, **event})
                else:
                    _show_event(event)
        elif args.json:
            _json_progress(current)
        elif not current.progress.events:
            _show_progress(current)

    final = client.wait(info.job_id, poll_s=1.0, timeout_s=args.timeout, on_progress=on_progress)
    return _final(client, final)


def _show_event(event: dict[str, Any]) -> None:
    """One training event as a log line (validations with all four change metrics)."""
    kind = event.get("event")
    if kind == "step":
        log.info("iteration %s/%s: loss %.4f", event.get("iteration"), event.get("iters"), event.get("loss") or 0.0)
    elif kind == "val":
        log.info("validation at %s: change precision %s recall %s F1 %s IoU %s%s", event.get("iteration"),
                 *(_pct(event.get(k)) for k in ("precision", "recall", "f1", "iou")),
                 " (best so far)" if event.get("best") else "")
    elif kind == "note":
        log.warning("%s", event.get("message"))
    elif kind == "start":
        log.info("training from iteration %s of %s on %s", event.get("iteration"), event.get("iters"),
                 event.get("device"))


def _pct(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{100 * value:.1f} %"


def params_from_args(args: argparse.Namespace) -> protocol.DetectParams:
    """The job parameters as ``changeclip detect`` builds them, with local paths made absolute
    (the server resolves paths on its side, not in the client's working folder).

    Raises:
        InputError: a parameter is invalid (names the option).
    """
    from changeclip.commands import detect

    params = detect.params_from_args(args)
    for name in _PATH_FIELDS:
        value = getattr(params, name)
        if isinstance(value, str) and value:
            setattr(params, name, os.path.abspath(os.path.expanduser(value)))
    return params


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get(ENV_URL),
                   help=f"server URL from its handshake line (default: ${ENV_URL})")
    p.add_argument("--token-file", default=os.environ.get(ENV_TOKEN_FILE),
                   help=f"token file from its handshake line (default: ${ENV_TOKEN_FILE})")


def _client(args: argparse.Namespace) -> Any:
    from changeclip.client import ChangeClipClient, read_token

    if not args.url or not args.token_file:
        raise InputError(f"which server? give --url and --token-file (or set {ENV_URL} and {ENV_TOKEN_FILE}) "
                         "from the handshake line that 'changeclip serve' printed")
    return ChangeClipClient(args.url, read_token(args.token_file))


def _print(obj: Any) -> None:
    data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
    sys.stdout.write(json.dumps(data, indent=None, sort_keys=False) + "\n")
    sys.stdout.flush()


def _show_progress(info: protocol.JobInfo) -> None:
    p = info.progress
    eta = f", about {p.eta_s:.0f} s left" if p.eta_s is not None else ""
    count = f" {p.done}/{p.total}" if p.total else ""
    log.info("job %s: %s, %s%s (%.0f%%)%s", info.job_id[:8], info.state, p.stage, count, 100 * p.fraction, eta)


def _json_progress(info: protocol.JobInfo) -> None:
    _print({"event": "progress", "job_id": info.job_id, "state": info.state, **dataclasses.asdict(info.progress)})


def _final(client: Any, info: protocol.JobInfo) -> int:
    """Print the final job (and result); map its state to the exit status."""
    if info.state == "succeeded":
        _print(client.result(info.job_id))
        return 0
    _print(info)
    if info.state == "cancelled":
        raise JobCancelled(f"job {info.job_id} was cancelled: {info.error or ''}".rstrip(": "))
    if info.state == "lost":
        raise ChangeClipError(f"job {info.job_id} was {info.error}")
    raise ChangeClipError(f"job {info.job_id} failed: {info.error}")


def _check_timeout(value: float | None) -> None:
    if value is not None and not value > 0:
        raise InputError(f"--timeout must be a positive number of seconds, got {value:g}")


def _still_running(job_id: str, why: str) -> int:
    """Say that waiting stopped but the job goes on, and how to follow or cancel it."""
    sys.stderr.write(f"{why}: job {job_id} keeps running on the server; follow it with 'changeclip status "
                     f"{job_id}', cancel it with 'changeclip cancel {job_id} --wait' (or submit with "
                     "--cancel-on-interrupt next time)\n")
    return EXIT_STILL_RUNNING


def run_submit(args: argparse.Namespace) -> int:
    """Queue the job; optionally wait for it."""
    from changeclip.client import WaitTimeout

    params = params_from_args(args)
    _check_timeout(args.timeout)
    client = _client(args)
    info = client.submit(params)
    if not args.wait:
        _print(info)
        return 0
    try:
        log.info("job %s queued on %s", info.job_id, info.device)
        final = client.wait(info.job_id, poll_s=1.0, timeout_s=args.timeout,
                            on_progress=_json_progress if args.json else _show_progress)
    except WaitTimeout:
        return _still_running(info.job_id, f"stopped waiting after {args.timeout:g} s")
    except KeyboardInterrupt:
        if not args.cancel_on_interrupt:
            return _still_running(info.job_id, "interrupted")
        sys.stderr.write(f"interrupted: cancelling job {info.job_id}\n")
        client.cancel(info.job_id)
        final = client.wait(info.job_id, poll_s=0.5, timeout_s=args.timeout)
    return _final(client, final)


def run_status(args: argparse.Namespace) -> int:
    """Print the server status, the job list or one job."""
    client = _client(args)
    if args.job_id:
        _print(client.job(args.job_id))
    elif args.jobs:
        _print({"jobs": [dataclasses.asdict(j) for j in client.jobs()]})
    else:
        _print(client.status())
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    """Cancel a job; optionally wait until it has stopped."""
    from changeclip.client import WaitTimeout

    _check_timeout(args.timeout)
    client = _client(args)
    info = client.cancel(args.job_id)
    if args.wait:
        try:
            info = client.wait(args.job_id, poll_s=0.5, timeout_s=args.timeout)
        except WaitTimeout:
            _print(client.job(args.job_id))
            sys.stderr.write(f"job {args.job_id} has not stopped after {args.timeout:g} s; it stops at its next "
                             "batch, and the server gives up a job that does not stop within 10 s of being "
                             f"cancelled; check with 'changeclip status {args.job_id}'\n")
            return EXIT_STILL_RUNNING
    _print(info)
    return 0
