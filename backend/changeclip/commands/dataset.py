"""``changeclip dataset``: make training-data folders (from vectors, from LEVIR/SYSU folders) and describe them."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from changeclip.commands.detect import add_pair_arguments
from changeclip.errors import InputError
from changeclip.protocol import DatasetParams, ParamError, parse_bands, parse_value_range


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dataset`` subcommand and its three verbs."""
    p = subparsers.add_parser(
        "dataset", help="make training data (tiles + dataset.json) and describe it",
        description="Make a training-data folder for 'changeclip train' (layout and manifest: docs/training-data.md).")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    _register_from_vectors(verbs)
    _register_from_folder(verbs)
    info = verbs.add_parser("info", help="splits, tile counts, class balance, GSD, CRS and sources of a dataset",
                            description="Describe a dataset folder made by 'changeclip dataset'.")
    info.add_argument("dataset", metavar="DATASET_DIR")
    info.add_argument("--json", action="store_true", help="print the manifest and the derived figures as JSON")
    info.set_defaults(func=run_info)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _register_from_vectors(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "from-vectors", help="tiles from two rasters and a layer of change polygons",
        description="Cut aligned before/after tiles (aligned and scaled to 8-bit exactly as 'detect' does) and "
                    "rasterise the change polygons onto them: 1 = change, 0 = no change inside the labelled area "
                    "(the AOI, else the overlap of both rasters), 255 = ignored (outside it, or nodata in a date). "
                    "Whole spatial blocks go to the val split.")
    p.add_argument("before", metavar="BEFORE", help="raster of the earlier date (any GDAL raster with a CRS)")
    p.add_argument("after", metavar="AFTER", help="raster of the later date")
    p.add_argument("changes", metavar="CHANGES", help="polygon layer of the changes (any OGR format, any CRS)")
    p.add_argument("-o", "--output", required=True, metavar="DATASET_DIR", help="dataset folder to create")
    p.add_argument("--layer", metavar="NAME", help="layer of CHANGES to read (needed when it holds several)")
    p.add_argument("--where", metavar="SQL", help="OGR SQL filter on CHANGES, e.g. \"class = 'building'\"")
    p.add_argument("--aoi", metavar="AOI_VECTOR",
                   help="polygons of the labelled area: outside them pixels are ignored (255); default: the "
                        "whole overlap of both rasters is labelled")
    p.add_argument("--aoi-layer", metavar="NAME", help="layer of AOI_VECTOR to read (needed when it holds several)")
    add_pair_arguments(p, "1-based bands used as R,G,B", "tile grid")
    p.add_argument("--tile", type=int, default=256, metavar="PX", help="tile size in px (default %(default)s)")
    p.add_argument("--stride", type=int, default=192, metavar="PX",
                   help="step between tiles in px; below --tile tiles overlap (default %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.15, metavar="F",
                   help="share of tiles in the val split (whole blocks; default %(default)s)")
    p.add_argument("--val-block-size", type=float, metavar="M",
                   help="side of the spatial blocks in metres (default: 4 tiles)")
    p.add_argument("--keep-empty", type=float, default=1.0, metavar="F",
                   help="share of training tiles without change that is kept (default %(default)s)")
    p.add_argument("--all-touched", action="store_true",
                   help="burn every pixel a change polygon touches (default: pixels whose centre is inside)")
    p.add_argument("--seed", type=int, default=0, help="seed of the val blocks and --keep-empty (default %(default)s)")
    p.add_argument("--train-dataset", metavar="NAME",
                   help="a name for this imagery, written into the manifest and into weights trained on it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    p.set_defaults(func=run_from_vectors)


def _register_from_folder(verbs: argparse._SubParsersAction) -> None:
    from changeclip.evaluation.labels import ENCODINGS

    p = verbs.add_parser(
        "from-folder", help="tiles from a LEVIR-CD / SYSU-CD style folder",
        description="Convert a folder in the layouts 'eval' reads (A/B/label or time1/time2/label, optionally "
                    "under train/ val/ test/) into a dataset folder: images larger than --tile are cut like the "
                    "official LEVIR-CD preparation, labels are normalised to 0/1 (255 = ignore).")
    p.add_argument("source", metavar="SRC", help="the dataset folder (LEVIR-CD, SYSU-CD, WHU-CD cut, ...)")
    p.add_argument("-o", "--output", required=True, metavar="DATASET_DIR", help="dataset folder to create")
    p.add_argument("--tile", type=int, default=256, metavar="PX", help="tile size in px (default %(default)s)")
    p.add_argument("--stride", type=int, default=192, metavar="PX",
                   help="step between tiles cut from larger images (default %(default)s, the official LEVIR-CD cut)")
    p.add_argument("--label-encoding", choices=ENCODINGS, default="auto",
                   help="label values: 0/255, 0/1 or any>0 (every non-zero value is change); default: detected "
                        "(0/255 or 0/1)")
    p.add_argument("--val-fraction", type=float, default=0.15, metavar="F",
                   help="share of source images moved to val when SRC has no val split (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of that val split (default %(default)s)")
    p.add_argument("--gsd", type=float, metavar="M", help="ground pixel size of the imagery in metres (e.g. 0.5 for "
                                                          "LEVIR-CD), recorded for the scale check of trained weights")
    p.add_argument("--train-dataset", metavar="NAME", help="a name for the imagery, e.g. LEVIR-CD")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    p.set_defaults(func=run_from_folder)


def _progress(stage: str, done: int, total: int) -> None:
    if total and (done == total or done % max(1, total // 10) == 0):
        sys.stderr.write(f"{stage}: {done}/{total}\n")


def vectors_params(args: argparse.Namespace, path: Callable[[str | None], str | None] = lambda p: p) -> DatasetParams:
    """The :class:`DatasetParams` of ``dataset from-vectors``'s options (also those of ``submit dataset``).

    ``path`` maps each file or folder option (``submit`` makes them absolute). Nothing is validated
    here beyond parsing ``--bands`` and ``--value-range``.

    Raises:
        InputError: ``--bands`` or ``--value-range`` cannot be parsed (names the option).
    """
    try:
        bands = parse_bands(args.bands)
        value_range = parse_value_range(args.value_range) if args.value_range else None
    except ParamError as exc:
        raise InputError(f"--{exc.field.replace('_', '-')}: {exc.message}") from None
    return DatasetParams(
        before=path(args.before), after=path(args.after), changes=path(args.changes), output_dir=path(args.output),
        layer=args.layer, where=args.where, aoi=path(args.aoi), aoi_layer=args.aoi_layer, bands=bands,
        value_range=value_range, grid=args.grid or ("custom" if args.target_crs else "before"),
        target_crs=args.target_crs, resolution=args.resolution, tile=args.tile, stride=args.stride,
        val_fraction=args.val_fraction, val_block_size=args.val_block_size, keep_empty=args.keep_empty,
        all_touched=args.all_touched, seed=args.seed, train_dataset=args.train_dataset, overwrite=args.overwrite)


def run_from_vectors(args: argparse.Namespace) -> int:
    """Run ``dataset from-vectors``."""
    from changeclip.datasets.from_vectors import make_dataset
    from changeclip.datasets.info import format_summary

    if args.resolution is not None and not args.target_crs:
        raise InputError("--resolution needs --target-crs (it defines a custom grid)")
    manifest = make_dataset(vectors_params(args), progress=_progress)
    sys.stdout.write(format_summary(manifest) + "\n")
    return 0


def run_from_folder(args: argparse.Namespace) -> int:
    """Run ``dataset from-folder``."""
    from changeclip.datasets.from_folder import FolderDatasetOptions, make_dataset
    from changeclip.datasets.info import format_summary

    opts = FolderDatasetOptions(source=args.source, output=args.output, tile=args.tile, stride=args.stride,
                                label_encoding=args.label_encoding, val_fraction=args.val_fraction, seed=args.seed,
                                gsd=args.gsd, train_dataset=args.train_dataset, overwrite=args.overwrite)
    manifest = make_dataset(opts, progress=_progress)
    sys.stdout.write(format_summary(manifest) + "\n")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Run ``dataset info``."""
    from changeclip.datasets.info import format_summary, summary_json
    from changeclip.datasets.manifest import read_manifest

    manifest = read_manifest(args.dataset)
    if args.json:
        sys.stdout.write(json.dumps(summary_json(manifest), indent=1) + "\n")
    else:
        sys.stdout.write(format_summary(manifest, sources=True) + "\n")
    return 0
