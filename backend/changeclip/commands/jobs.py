"""``changeclip submit`` / ``status`` / ``cancel``: talk to a running ``changeclip serve``.

The server is found by ``--url`` and ``--token-file`` (defaults: the environment
variables ``CHANGECLIP_URL`` and ``CHANGECLIP_TOKEN_FILE``; both are in the server's
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

ENV_URL = "CHANGECLIP_URL"
ENV_TOKEN_FILE = "CHANGECLIP_TOKEN_FILE"
_PATH_FIELDS = ("before", "after", "output_dir", "weights", "tagger_weights", "mask_path", "probability_path",
                "polygons_path")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``submit``, ``status`` and ``cancel``."""
    p = subparsers.add_parser("submit", help="queue a detection job on a running server",
                              description="Queue a detection job on a running 'changeclip serve' (same options as "
                                          "'changeclip detect'). Prints the job as JSON; with --wait, waits for it "
                                          "(progress on stderr) and prints the result.")
    _server_options(p)
    add_params_arguments(p)
    p.add_argument("--wait", action="store_true", help="wait for the job; exit 0 if it succeeded, 1 if it "
                                                      "failed, 130 if it was cancelled")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="with --wait: give up after S seconds")
    p.set_defaults(func=run_submit)

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
    p.set_defaults(func=run_cancel)


def add_params_arguments(p: argparse.ArgumentParser) -> None:
    """Options for every field of :class:`protocol.DetectParams` (defaults: the protocol's)."""
    d = {f["name"]: f["default"] for f in protocol.param_fields()}
    p.add_argument("before", help="raster of the earlier date")
    p.add_argument("after", help="raster of the later date")
    p.add_argument("-o", "--output-dir", required=True, help="folder for the outputs")
    p.add_argument("--engine", choices=protocol.ENGINES, default=d["engine"])
    p.add_argument("--weights", default=None, help="ChangeCLIP weights file (engine changeclip)")
    p.add_argument("--variant", choices=protocol.VARIANTS, default=d["variant"])
    p.add_argument("--prompt", default=d["prompt"], help="extra words for the foreground prompt")
    p.add_argument("--prompt-mode", choices=protocol.PROMPT_MODES, default=d["prompt_mode"])
    p.add_argument("--tagger-weights", default=None, help="CLIP weights of the tagger (prompt mode auto)")
    p.add_argument("--official-test-prompts", action="store_true")
    p.add_argument("--bands", type=protocol.parse_bands, default=d["bands"], help="1-based bands, e.g. 3,2,1")
    p.add_argument("--value-range", type=protocol.parse_value_range, default=None,
                   help="MIN:MAX for all bands or one per band, e.g. 0:3000")
    p.add_argument("--grid", choices=protocol.GRIDS, default=d["grid"])
    p.add_argument("--target-crs", default=None, help="CRS of grid 'custom', e.g. EPSG:32633")
    p.add_argument("--resolution", type=float, default=None, help="pixel size of grid 'custom' (CRS units)")
    p.add_argument("--tile", type=int, default=d["tile"], help="tile size in pixels (multiple of 32)")
    p.add_argument("--overlap", type=int, default=d["overlap"], help="tile overlap in pixels")
    p.add_argument("--device", default=d["device"], help=protocol.DEVICES_HELP)
    p.add_argument("--precision", choices=protocol.PRECISIONS, default=d["precision"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--threshold", type=float, default=None, help="change threshold 0..1 (default: the engine's)")
    p.add_argument("--probability-dtype", choices=protocol.PROBABILITY_DTYPES, default=d["probability_dtype"])
    p.add_argument("--polygons", action="store_true", help="also write change polygons (GeoPackage)")
    p.add_argument("--min-area", type=float, default=d["min_area"], help="smallest polygon kept, m²")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--mask-path", default=None)
    p.add_argument("--probability-path", default=None)
    p.add_argument("--polygons-path", default=None)


def params_from_args(args: argparse.Namespace) -> protocol.DetectParams:
    """The validated job parameters; local paths made absolute (the server needs absolute paths).

    Raises:
        InputError: a parameter is invalid (names it).
    """
    values: dict[str, Any] = {}
    for f in dataclasses.fields(protocol.DetectParams):
        value = getattr(args, f.name)
        if f.name in _PATH_FIELDS and isinstance(value, str) and value:
            value = os.path.abspath(os.path.expanduser(value))
        values[f.name] = value
    try:
        return protocol.DetectParams.from_dict(values)
    except protocol.ParamError as exc:
        raise InputError(str(exc)) from exc


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


def _final(client: Any, info: protocol.JobInfo) -> int:
    """Print the final job (and result); map its state to the exit status."""
    if info.state == "succeeded":
        _print(client.result(info.job_id))
        return 0
    _print(info)
    if info.state == "cancelled":
        raise JobCancelled(f"job {info.job_id} was cancelled: {info.error or ''}".rstrip(": "))
    raise ChangeClipError(f"job {info.job_id} failed: {info.error}")


def run_submit(args: argparse.Namespace) -> int:
    """Queue the job; optionally wait for it."""
    params = params_from_args(args)
    client = _client(args)
    info = client.submit(params)
    if not args.wait:
        _print(info)
        return 0
    log.info("job %s queued on %s", info.job_id, info.device)
    final = client.wait(info.job_id, poll_s=1.0, timeout_s=args.timeout, on_progress=_show_progress)
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
    client = _client(args)
    info = client.cancel(args.job_id)
    if args.wait:
        info = client.wait(args.job_id, poll_s=0.5)
    _print(info)
    return 0
