"""``changeclip bench``: speed benchmarks with a measured naive baseline (see docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import logging
import sys

from changeclip.errors import InputError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    p = subparsers.add_parser(
        "bench", help="measure network throughput, text-side cost and end-to-end speed against a naive baseline",
        description="Benchmark ChangeCLIP with seeded (random) weights: network pairs/s per variant, batch and "
                    "precision; text-encoder cost and cache hit rate per prompt mode; end-to-end GeoTIFF -> GeoTIFF "
                    "MPix/s on a synthetic pair; peak memory. Each figure is measured next to a naive baseline "
                    "(batch 1, fp32, text encoded per pair, no I/O overlap) in the same run. Prints a table, "
                    "writes JSON.")
    p.add_argument("--out", required=True, metavar="FILE", help="write the JSON report to FILE")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--profile", choices=("cpu", "gpu", "quick"), default=None,
                   help="what to measure (default: gpu on a CUDA device, else cpu)")
    p.add_argument("--quick", action="store_true", help="same as --profile quick: tiny networks, seconds")
    p.add_argument("--tagger-weights", metavar="FILE", help="CLIP weights to include prompt mode auto in the "
                                                            "hit-rate section")
    p.add_argument("--compile", action="store_true", help="also time a torch.compile-d forward (GPU lever)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the suite, write JSON, print the tables last."""
    import dataclasses

    import torch

    from changeclip.bench.suite import PROFILES, format_report, run_suite
    from changeclip.evaluation.report import write_json
    from changeclip.inference.devices import resolve_device

    device = resolve_device(args.device)
    name = "quick" if args.quick else (args.profile or ("gpu" if device.startswith("cuda") else "cpu"))
    if name == "gpu" and not device.startswith("cuda"):
        raise InputError("profile gpu needs a CUDA device; use --device cuda or --profile cpu")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    profile = dataclasses.replace(PROFILES[name], compile_model=bool(args.compile))
    log.info("benchmark profile %s on %s", name, device)
    report = run_suite(profile, device, tagger_weights=args.tagger_weights)
    write_json(report, args.out)
    log.info("report written to %s", args.out)
    sys.stdout.write(format_report(report) + "\n")
    return 0
