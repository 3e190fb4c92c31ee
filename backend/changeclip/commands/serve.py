"""``changeclip serve``: the long-lived backend service (HTTP job API on loopback)."""

from __future__ import annotations

import argparse

from changeclip import protocol
from changeclip.server.settings import DEFAULT_HOST


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="run the backend service that keeps models loaded and runs jobs",
        description="Run the backend service. Prints one JSON handshake line on stdout when ready "
                    f"(keys: {', '.join(protocol.HANDSHAKE_KEYS)}); logs go to stderr. Every endpoint "
                    f"except {protocol.PATH_LIVE} needs 'Authorization: Bearer <token>', the token being "
                    "the content of token_file. Stop it with POST /v1/shutdown, Ctrl-C or SIGTERM (or, with --parent-pid, by ending that process).",
    )
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default %(default)s: this machine only; anything else exposes "
                        "the service, with its token in clear text, to the network)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default 0: a free port, see the handshake)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="read the token from FILE if it exists (it must be mode 0600), else create FILE with "
                        "a new random token (mode 0600); default: a new file in a private temporary folder, "
                        "removed when the server stops")
    p.add_argument("--device", default="auto", help=f"device for jobs that ask for 'auto': {protocol.DEVICES_HELP}"
                                                    " (default %(default)s: the first GPU if any, else the CPU)")
    p.add_argument("--max-models", type=int, default=2, metavar="N",
                   help="most models kept loaded at once, least recently used dropped first (default %(default)s)")
    p.add_argument("--max-model-memory-gb", type=float, default=None, metavar="GB",
                   help="unload the cached models when, after a job, they hold more GPU memory than this "
                        "(default: 75%% of the GPU's memory)")
    p.add_argument("--parent-pid", type=int, default=None, metavar="PID",
                   help="stop (as on SIGTERM: jobs cancelled, partial outputs and the temporary token removed) "
                        "within about a second of process PID exiting; for launchers such as the QGIS plugin, "
                        "so that a crashed launcher leaves no server behind")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="folder of the durable job journal (jobs.sqlite3: every job's last state, kept across "
                        "restarts); default: $CHANGECLIP_STATE_DIR, else ~/.local/state/changeclip (Windows: "
                        "%%LOCALAPPDATA%%\\changeclip, macOS: ~/Library/Application Support/changeclip)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until shut down."""
    from changeclip.server.process import run_server

    return run_server(host=args.host, port=args.port, token_file=args.token_file, device=args.device,
                      max_models=args.max_models, max_model_memory_gb=args.max_model_memory_gb,
                      verbose=bool(getattr(args, "verbose", False)), parent_pid=args.parent_pid,
                      state_dir=args.state_dir)
