"""``changeclip detect BEFORE AFTER -o OUT_DIR``: change detection on two georeferenced rasters."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from changeclip.errors import ChangeClipError, InputError, JobCancelled
from changeclip.interrupts import Interrupts
from changeclip.protocol import (
    DEFAULT_MIN_POLYGON_PIXELS,
    DEFAULT_QUERY_THRESHOLD,
    DEVICES_HELP,
    ENGINES,
    GRIDS,
    MATCHING_MASK_NAME,
    MATCHING_POLYGONS_NAME,
    PRECISIONS,
    PROBABILITY_DTYPES,
    PROMPT_MODES,
    VARIANTS,
    DetectParams,
    ParamError,
    parse_bands,
    parse_value_range,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``detect`` subcommand."""
    p = subparsers.add_parser(
        "detect", help="detect change between two georeferenced rasters",
        description="Detect change between a BEFORE and an AFTER raster (any GDAL format). The after raster is "
                    "warped onto the before raster's grid (or the other way round, or onto a target CRS), only "
                    "their overlap is processed, and OUT_DIR receives change_mask.tif (1 change, 0 no change, "
                    "255 nodata), change_probability.tif, summary.json and optionally change_polygons.gpkg.")
    add_arguments(p)
    p.add_argument("--json", action="store_true",
                   help="print JSON lines on stdout: progress events, then the summary")
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the detection options (inputs, model, tiling, outputs) to ``p``.

    They map one to one onto :class:`DetectParams` through :func:`params_from_args`.
    ``changeclip submit`` shares them; ``--json`` is not among them, since each command
    defines its own output.
    """
    p.add_argument("before", metavar="BEFORE", help="raster of the earlier date")
    p.add_argument("after", metavar="AFTER", help="raster of the later date")
    p.add_argument("-o", "--output-dir", required=True, metavar="OUT_DIR", help="output folder (created if missing)")
    p.add_argument("--engine", choices=ENGINES, default="changeclip",
                   help="changeclip: the network (needs --weights); irmad: unsupervised IR-MAD, no weights "
                        "(default %(default)s)")
    p.add_argument("--weights", metavar="FILE", help="ChangeCLIP weights (.safetensors or official .pth)")
    p.add_argument("--variant", choices=VARIANTS, default="auto", help="image encoder (default: from the weights)")
    p.add_argument("--prompt", default="", metavar="TEXT", help="change-of-interest words, e.g. 'building, road'")
    p.add_argument("--prompt-mode", choices=PROMPT_MODES, default="auto",
                   help="auto: CLIP tagger per tile (+ your words; needs --tagger-weights offline); none: constant "
                        "prompts; words: your words only (default %(default)s)")
    p.add_argument("--tagger-weights", metavar="FILE", help="OpenAI CLIP ViT-B/16 weights for prompt mode auto")
    p.add_argument("--official-test-prompts", action="store_true",
                   help="reproduce the official test-time prompts (date B uses date A's tags)")
    add_pair_arguments(p, "1-based bands used as R,G,B (changeclip) or all bands used (irmad)", "output grid")
    p.add_argument("--tile", type=int, default=256, metavar="PX", help="tile size, multiple of 32 (default %(default)s)")
    p.add_argument("--overlap", type=int, default=64, metavar="PX",
                   help="overlap of neighbouring tiles, blended (default %(default)s)")
    p.add_argument("--device", default="auto", help=f"{DEVICES_HELP} (default %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="tiles per batch (default %(default)s)")
    p.add_argument("--threshold", type=float, metavar="P",
                   help="probability above which a pixel is change (default 0.5; irmad: its calibrated change "
                        "score, 0.5 = significant at 1 %%)")
    p.add_argument("--probability-dtype", choices=PROBABILITY_DTYPES, default="uint8",
                   help="uint8: percent 0-100 (255 nodata); float32: 0-1 (-1 nodata); default %(default)s")
    p.add_argument("--polygons", action="store_true", help="also write change_polygons.gpkg with area_m2")
    p.add_argument("--min-area", type=float, default=0.0, metavar="M2",
                   help="drop change polygons smaller than this many m² (default %(default)s)")
    p.add_argument("--min-pixels", type=int, default=DEFAULT_MIN_POLYGON_PIXELS, metavar="N",
                   help="drop change polygons of fewer than N output pixels (default %(default)s; 0 keeps "
                        "single pixels); applies together with --min-area")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    d = p.add_argument_group("describing changes in words (CLIP; needs --polygons)")
    d.add_argument("--describe", action="store_true",
                   help="CLIP names what each change polygon was and became (before_class, after_class, change_label)")
    d.add_argument("--query", default="", metavar="TEXT",
                   help="score every polygon against words ('building') or a transition ('farmland to building')")
    d.add_argument("--query-threshold", type=float, default=DEFAULT_QUERY_THRESHOLD, metavar="P",
                   help="query_score at or above which a polygon matches (default %(default)s)")
    d.add_argument("--keep-matching", action="store_true",
                   help=f"also write {MATCHING_POLYGONS_NAME} and {MATCHING_MASK_NAME} (only the matching changes)")
    d.add_argument("--vocabulary", metavar="FILE",
                   help="class names, one per line, replacing the 56 defaults (a line @default includes them)")
    d.add_argument("--describe-weights", metavar="FILE",
                   help="CLIP weights: OpenAI ViT-B-16 (default, as --tagger-weights) or a remote-sensing CLIP")
    d.add_argument("--describe-model", metavar="NAME",
                   help="open_clip architecture of --describe-weights, e.g. ViT-B-32 for RemoteCLIP/GeoRSCLIP")


def add_pair_arguments(p: argparse.ArgumentParser, bands_help: str, grid_what: str) -> None:
    """Add how the two rasters are read and aligned: --bands, --value-range, --grid, --target-crs, --resolution.

    Shared with ``changeclip dataset from-vectors``, which cuts training tiles on the grid detect would use.
    """
    p.add_argument("--bands", default="1,2,3", metavar="B,G,R...", help=f"{bands_help}; default %(default)s")
    p.add_argument("--value-range", metavar="MIN:MAX[,MIN:MAX...]",
                   help="fixed value range mapped to 0..255 for both dates (one for all bands or one per band); "
                        "default: 0:255 for 8-bit, else the 2nd-98th percentile of both dates")
    p.add_argument("--grid", choices=GRIDS, default=None,
                   help=f"{grid_what}: the before raster's (default), the after raster's, or custom "
                        "(--target-crs and --resolution)")
    p.add_argument("--target-crs", metavar="CRS", help="CRS of a custom grid, e.g. EPSG:32633 (implies --grid custom)")
    p.add_argument("--resolution", type=float, metavar="UNITS", help="pixel size of a custom grid in CRS units")


def params_from_args(args: argparse.Namespace) -> DetectParams:
    """Build and validate :class:`DetectParams` from parsed arguments.

    Raises:
        InputError: An option is invalid (the message names it and the fix).
    """
    if args.resolution is not None and not args.target_crs:
        raise InputError("--resolution needs --target-crs (it defines a custom grid); to keep a raster's own "
                         "grid leave --resolution out")
    try:
        grid = args.grid or ("custom" if args.target_crs else "before")
        params = DetectParams(
            before=args.before, after=args.after, output_dir=args.output_dir, engine=args.engine,
            weights=args.weights, variant=args.variant, prompt=args.prompt, prompt_mode=args.prompt_mode,
            tagger_weights=args.tagger_weights, official_test_prompts=args.official_test_prompts,
            bands=parse_bands(args.bands),
            value_range=parse_value_range(args.value_range) if args.value_range else None,
            grid=grid, target_crs=args.target_crs, resolution=args.resolution, tile=args.tile,
            overlap=args.overlap, device=args.device, precision=args.precision, batch_size=args.batch_size,
            threshold=args.threshold, probability_dtype=args.probability_dtype, polygons=args.polygons,
            min_area=args.min_area, min_pixels=args.min_pixels, overwrite=args.overwrite,
            describe=args.describe, query=args.query, query_threshold=args.query_threshold,
            keep_matching=args.keep_matching, vocabulary=args.vocabulary, describe_weights=args.describe_weights,
            describe_model=args.describe_model)
        params.validate()
    except ParamError as exc:
        option = "--" + exc.field.replace("_", "-")
        raise InputError(f"{option}: {exc.message}") from None
    return params


class ProgressPrinter:
    """Progress on stderr (a bar) or as JSON lines on stdout."""

    def __init__(self, as_json: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream or (sys.stdout if as_json else sys.stderr)
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last: tuple[str, int] = ("", -1)
        self._t0 = time.monotonic()

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Report one progress event."""
        if self.as_json:
            self.emit({"event": "progress", "stage": stage, "done": done, "total": total,
                       "elapsed_s": round(time.monotonic() - self._t0, 3)})
            return
        pct = int(100 * done / total) if total else 100
        if not self._tty and (stage, pct // 10) == (self._last[0], self._last[1] // 10) and done != total:
            return
        self._last = (stage, pct)
        width = 30
        fill = int(width * done / total) if total else width
        line = f"{stage:<13} [{'#' * fill}{'.' * (width - fill)}] {done}/{total}"
        self.stream.write(("\r" + line) if self._tty else line + "\n")
        if self._tty and (done == total or stage == "done"):
            self.stream.write("\n")
        self.stream.flush()

    def emit(self, obj: dict[str, Any]) -> None:
        """Write one JSON line."""
        self.stream.write(json.dumps(obj) + "\n")
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    """Run ``changeclip detect``; returns the exit code (errors raise ChangeClipError)."""
    from changeclip.pipeline import run_detection

    printer = ProgressPrinter(args.json)
    interrupts = Interrupts()
    try:
        params = params_from_args(args)
        with interrupts:
            try:
                summary = run_detection(params, progress=printer, is_cancelled=interrupts.is_set)
            except JobCancelled:
                raise JobCancelled(f"interrupted by {interrupts.received or 'a signal'}; partial outputs were "
                                   "removed and no output was written") from None
    except ChangeClipError as exc:
        if args.json:
            printer.emit({"event": "error", "error": type(exc).__name__, "message": str(exc),
                          "exit_code": exc.exit_code})
        raise
    if args.json:
        printer.emit({"event": "summary", "summary": summary})
    else:
        frac = summary["changed_fraction"] or 0.0
        area = summary["changed_area_m2"]
        area_txt = f"{area:,.0f} m²" if area is not None else "area unknown (no CRS)"
        sys.stderr.write(f"engine {summary['engine']} on {summary['device']}: {100 * frac:.3f} % of the valid "
                         f"area changed ({area_txt}); outputs in {params.output_dir}\n")
    return 0
