"""``changeclip eval``: accuracy against reference masks (the paper's global confusion matrix)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from changeclip import protocol
from changeclip.errors import InputError

log = logging.getLogger(__name__)

EVAL_PROTOCOLS = ("tiles", "levir-merge", "levir-slide")
LABEL_ENCODINGS = ("auto", "0/255", "0/1")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    p = subparsers.add_parser(
        "eval",
        help="score change masks against reference masks (precision, recall, F1, IoU, OA, kappa)",
        description=(
            "Score change detection against reference masks with one confusion matrix over all pixels "
            "(the paper's protocol). Three modes: (1) DATASET_DIR in LEVIR-CD layout (A/, B/, label/): run "
            "an engine under --protocol and score; (2) --pred PRED --ref REF: score existing masks (files "
            "or folders matched by name); (3) --before/--after with --ref or --ref-changed/--ref-unchanged: "
            "run the detection pipeline on a georeferenced pair and score its mask on the reference grid. "
            "Label encoding (0/255 or 0/1) is detected and reported; mixed or odd values are an error."),
    )
    p.add_argument("dataset", nargs="?", metavar="DATASET_DIR", help="folder with A/, B/ and label/ sub-folders")
    src = p.add_argument_group("masks and references")
    src.add_argument("--pred", metavar="PATH", help="prediction mask file or folder (mode 2)")
    src.add_argument("--ref", metavar="PATH", help="reference mask file or folder (modes 2 and 3)")
    src.add_argument("--ref-changed", metavar="MASK", help="sparse reference: non-zero = changed (with --ref-unchanged)")
    src.add_argument("--ref-unchanged", metavar="MASK", help="sparse reference: non-zero = unchanged; pixels in "
                                                             "neither mask are ignored")
    src.add_argument("--before", metavar="RASTER", help="earlier georeferenced raster (mode 3)")
    src.add_argument("--after", metavar="RASTER", help="later georeferenced raster (mode 3)")
    src.add_argument("--label-encoding", choices=LABEL_ENCODINGS, default="auto",
                     help="reference values: 0/255 or 0/1; default: detected and reported")
    src.add_argument("--pred-encoding", choices=LABEL_ENCODINGS, default="auto",
                     help="prediction values (mode 2); default: detected (a file's nodata value is always ignored)")
    src.add_argument("--ignore-value", type=int, action="append", default=[], metavar="V",
                     help="reference value meaning 'unlabelled', left out of the scores (repeatable)")
    eng = p.add_argument_group("engine (modes 1 and 3)")
    eng.add_argument("--engine", choices=protocol.ENGINES, default="changeclip",
                     help="changeclip (needs --weights) or irmad (no weights); default %(default)s")
    eng.add_argument("--weights", metavar="FILE", help="ChangeCLIP weights (native .safetensors or official .pth)")
    eng.add_argument("--variant", choices=protocol.VARIANTS, default="auto")
    eng.add_argument("--protocol", choices=EVAL_PROTOCOLS, default="tiles",
                     help="tiles: each image whole (or non-overlapping tiles); levir-merge: official LEVIR-CD "
                          "256 tiles, overlap 64, mirror padding, AND merge; levir-slide: 256 windows at stride "
                          "128, logits averaged (default %(default)s)")
    eng.add_argument("--tile", type=int, default=256, help="tile/window size in px (default %(default)s)")
    eng.add_argument("--prompt-mode", choices=protocol.PROMPT_MODES, default="none",
                     help="ChangeCLIP prompts: auto (tagger, needs --tagger-weights), none, words "
                          "(default %(default)s)")
    eng.add_argument("--prompt", default="", help="prompt words for --prompt-mode words/auto")
    eng.add_argument("--tagger-weights", metavar="FILE", help="CLIP ViT-B/16 weights for --prompt-mode auto")
    eng.add_argument("--official-test-prompts", action="store_true",
                     help="reproduce the official test path's prompt quirk (A's tags for B)")
    eng.add_argument("--device", default="auto", help=f"{protocol.DEVICES_HELP} (default %(default)s)")
    eng.add_argument("--precision", choices=protocol.PRECISIONS, default="auto",
                     help="auto, fp32, bf16, fp16, or int8 (CPU runtimes; calibrated on the first tiles)")
    eng.add_argument("--runtime", choices=protocol.RUNTIMES, default="auto",
                     help="auto (GPU: torch; CPU: the fastest measured runtime), torch, onnxruntime or openvino")
    eng.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default %(default)s)")
    eng.add_argument("--threshold", type=float, default=None,
                     help="change-probability threshold; default: argmax for changeclip, the engine's for irmad")
    eng.add_argument("--overlap", type=int, default=64,
                     help="mode 3: tile overlap of the detection pipeline in px (default %(default)s)")
    eng.add_argument("--bands", default="1,2,3", help="mode 3: band numbers, e.g. 3,2,1 (default %(default)s)")
    eng.add_argument("--value-range", default=None, help="mode 3: MIN:MAX[,MIN:MAX...] radiometric scaling")
    eng.add_argument("--keep-outputs", metavar="DIR", help="mode 3: keep the detection outputs in DIR")
    out = p.add_argument_group("output")
    out.add_argument("--json-out", metavar="FILE", help="write the JSON report to FILE")
    out.add_argument("--per-image", action="store_true", help="add a per-image table (and list in the JSON)")
    p.set_defaults(func=run)


def _mode(args: argparse.Namespace) -> str:
    engine_inputs = args.before or args.after
    if args.pred:
        if args.dataset or engine_inputs:
            raise InputError("--pred scores existing masks: do not also give DATASET_DIR or --before/--after")
        return "pred"
    if engine_inputs:
        if not (args.before and args.after):
            raise InputError("give both --before and --after")
        if args.dataset:
            raise InputError("give either DATASET_DIR or --before/--after, not both")
        return "pair"
    if args.dataset:
        if args.ref or args.ref_changed or args.ref_unchanged:
            raise InputError("DATASET_DIR brings its own label/ folder; --ref/--ref-changed are for --pred or "
                             "--before/--after")
        return "dataset"
    raise InputError("nothing to evaluate: give DATASET_DIR, or --pred with --ref, or --before/--after with --ref")


def build_scorer(args: argparse.Namespace) -> Any:
    """The engine adapter for dataset mode (see :mod:`changeclip.evaluation.scorers`).

    The engine is built exactly as ``changeclip detect`` builds it (``build_engine``);
    ChangeCLIP is then scored through its predictor's logits, irmad through probabilities.
    """
    from changeclip.engines import build_engine
    from changeclip.evaluation.scorers import ChangeCLIPScorer, IrmadScorer

    try:
        params = protocol.DetectParams(
            before="-", after="-", output_dir="-", engine=args.engine, weights=args.weights, variant=args.variant,
            prompt=args.prompt, prompt_mode=args.prompt_mode, tagger_weights=args.tagger_weights,
            official_test_prompts=args.official_test_prompts, device=args.device, precision=args.precision,
            runtime=args.runtime, batch_size=args.batch_size, threshold=args.threshold, tile=args.tile, overlap=args.tile // 4)
        params.validate()
    except protocol.ParamError as exc:
        raise InputError(str(exc)) from None
    engine = build_engine(params)
    if args.engine == "irmad":
        return IrmadScorer(engine, args.threshold)
    return ChangeCLIPScorer(engine.predictor, args.threshold)


def _detect_params(args: argparse.Namespace) -> protocol.DetectParams:
    try:
        params = protocol.DetectParams(
            before=args.before, after=args.after, output_dir="-", engine=args.engine, weights=args.weights,
            variant=args.variant, prompt=args.prompt, prompt_mode=args.prompt_mode,
            tagger_weights=args.tagger_weights, official_test_prompts=args.official_test_prompts,
            bands=protocol.parse_bands(args.bands),
            value_range=protocol.parse_value_range(args.value_range) if args.value_range else None,
            tile=args.tile, overlap=args.overlap, device=args.device, precision=args.precision, runtime=args.runtime,
            batch_size=args.batch_size, threshold=args.threshold)
        params.validate()
    except protocol.ParamError as exc:
        raise InputError(str(exc)) from None
    return params


def _log_progress(stage: str, done: int, total: int) -> None:
    if done == total or done % max(1, total // 20) == 0:
        log.info("%s: %d/%d", stage, done, total)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the table; write JSON if asked."""
    from changeclip.evaluation import runner
    from changeclip.evaluation.report import format_table, write_json

    mode = _mode(args)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    common = {"label_encoding": args.label_encoding, "ignore_values": args.ignore_value,
              "per_image": args.per_image}
    if mode == "pred":
        report = runner.evaluate_predictions(args.pred, args.ref, ref_changed=args.ref_changed,
                                             ref_unchanged=args.ref_unchanged, pred_encoding=args.pred_encoding,
                                             **common)
    elif mode == "pair":
        report = runner.evaluate_georeferenced_pair(_detect_params(args), args.ref, ref_changed=args.ref_changed,
                                                    ref_unchanged=args.ref_unchanged,
                                                    keep_outputs=args.keep_outputs, **common)
    else:
        scorer = build_scorer(args)
        report = runner.evaluate_dataset(args.dataset, scorer, args.protocol, tile=args.tile,
                                         batch_size=args.batch_size, progress=_log_progress, **common)
    if args.json_out:
        write_json(report, args.json_out)
        log.info("report written to %s", args.json_out)
    sys.stdout.write(format_table(report) + "\n")
    return 0
