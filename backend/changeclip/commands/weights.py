"""``changeclip weights``: convert official checkpoints, inspect weights files, make test weights."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from changeclip.errors import InputError

log = logging.getLogger(__name__)

VARIANT_CHOICES = ("auto", "rn50", "vit-b-16", "tiny-rn50", "tiny-vit")
RANDOM_WARNING = "RANDOM weights for tests and demos: their change maps are meaningless"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``weights`` subcommand and its actions."""
    p = subparsers.add_parser(
        "weights", help="convert, inspect or generate ChangeCLIP weights files",
        description="Convert the authors' official mmengine .pth checkpoints to the native .safetensors "
                    "format (read safely: nothing in the file is executed), show what a weights file holds, "
                    "or write seeded random weights for tests and demos.")
    sub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)

    c = sub.add_parser("convert", help="official .pth (or native) -> native .safetensors",
                       description="Read an official ChangeCLIP checkpoint (e.g. changeclip_levir/"
                                   "best_mIoU_iter_17000.pth) with the restricted loader, detect its variant "
                                   "and write native weights with the configuration and provenance inside.")
    c.add_argument("source", metavar="OFFICIAL.pth", help="official mmengine checkpoint (or a native file)")
    c.add_argument("output", metavar="OUT.safetensors", help="native weights file to write")
    c.add_argument("--variant", choices=VARIANT_CHOICES, default="auto",
                   help="expected variant; default: detected from the keys")
    c.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    c.add_argument("--train-gsd", type=float, metavar="M",
                   help="ground sampling distance of the training imagery in metres per pixel (e.g. 0.5); "
                        "detection warns when a scene's pixels are 2x or more from it; default: from the "
                        "official config's data_root (LEVIR-CD, LEVIR-CD+, SYSU-CD 0.5, WHU-CD 0.3) or the "
                        "source's metadata")
    c.add_argument("--train-dataset", metavar="NAME",
                   help="name of the training dataset (a known name also sets --train-gsd); default: detected")
    c.set_defaults(func=_convert)

    i = sub.add_parser("info", help="format, variant, parameters, sha256, metadata, gamma of a weights file")
    i.add_argument("file", metavar="FILE", help="native .safetensors or official .pth")
    i.add_argument("--variant", choices=VARIANT_CHOICES, default="auto", help="expected variant (checked)")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.set_defaults(func=_info)

    s = sub.add_parser("make-seeded", help="write seeded RANDOM weights (tests/demos only)",
                       description="Write a native file with the parity kit's deterministic random weights. "
                                   "The file is labelled random; its change maps are meaningless.")
    s.add_argument("--preset", choices=VARIANT_CHOICES[1:], default="tiny-rn50",
                   help="network (default %(default)s; rn50/vit-b-16 write 0.5-0.7 GB)")
    s.add_argument("--seed", type=int, default=0, help="seed of the rule (default %(default)s)")
    s.add_argument("output", metavar="OUT.safetensors")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    s.set_defaults(func=_make_seeded)

    f = sub.add_parser("from-clip", help="a training start point from OpenAI CLIP weights (local file)",
                       description="Initialise ChangeCLIP's image and text towers from OpenAI CLIP weights "
                                   "(RN50.pt or ViT-B-16.pt, or open_clip state dicts) as the official code "
                                   "does; the other parts keep a seeded random initialisation. Not a change "
                                   "detector until trained.")
    f.add_argument("clip", metavar="CLIP_FILE")
    f.add_argument("output", metavar="OUT.safetensors")
    f.add_argument("--variant", choices=VARIANT_CHOICES, default="auto", help="network (default: from the CLIP)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    f.set_defaults(func=_from_clip)


def _output(path: str, overwrite: bool) -> Path:
    out = Path(path).expanduser()
    if out.suffix != ".safetensors":
        raise InputError(f"output {out} must end in .safetensors (the native format)")
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist")
    return out


def _convert(args: argparse.Namespace) -> int:
    from changeclip.weights import load_weights
    from changeclip.weights.native import save_weights
    from changeclip.weights.training_data import check_gsd

    out = _output(args.output, args.overwrite)
    if args.train_gsd is not None:
        check_gsd(args.train_gsd, "--train-gsd")  # before reading a file of hundreds of MB
    loaded = load_weights(args.source, args.variant)
    meta: dict[str, Any] = {"converted_from": Path(args.source).name, "source_format": loaded.source_format,
                            "source_sha256": loaded.sha256}
    meta.update({k: v for k, v in loaded.meta.items() if k not in meta})
    training = _training_for_convert(loaded.meta, args.train_dataset, args.train_gsd)
    if training is not None:
        meta.update({"train_dataset": training.dataset, "train_gsd_m": training.gsd_m})
    save_weights(loaded.state_dict, loaded.cfg, out, meta=meta)
    sys.stdout.write(f"converted {args.source} ({loaded.source_format}, {loaded.cfg.name}) -> {out}\n")
    if training is not None and training.gsd_m is not None:
        sys.stdout.write(f"training imagery: {training.describe()} ({training.source}); detection warns when a "
                         "scene's pixels are 2x or more from it\n")
    else:
        sys.stdout.write("training GSD unknown: pass --train-gsd M (metres per pixel of the training imagery) so "
                         "that detection can warn when a scene's scale is far from it\n")
    return 0


def _training_for_convert(meta: dict[str, Any], dataset: str | None, gsd: float | None) -> Any:
    """The training data to record: the options given, else what the source says (None: nothing known)."""
    from changeclip.weights.training_data import TrainingData, check_gsd, known_dataset, training_data

    found = training_data(meta)
    if dataset is None and gsd is None:
        return found
    if gsd is not None:
        gsd = check_gsd(gsd, "--train-gsd")
    elif dataset is not None:
        known = known_dataset(dataset)
        gsd = known.gsd_m if known is not None else None
        if gsd is None and found is not None and found.dataset == dataset:
            gsd = found.gsd_m
    name = dataset if dataset is not None else (found.dataset if found is not None else None)
    return TrainingData(name or None, gsd, "weights metadata")


def weights_summary(path: str, variant: str = "auto") -> dict[str, Any]:
    """What ``weights info`` reports about a file (also used by other commands).

    Returns:
        JSON-compatible dict: file, size, sha256, format, variant, backbone, tensors,
        parameters, random flag, meta summary and gamma statistics.
    """
    from changeclip.weights import is_random, load_weights
    from changeclip.weights.training_data import training_data

    loaded = load_weights(path, variant)
    state = loaded.state_dict
    buffer_suffixes = ("running_mean", "running_var", "num_batches_tracked", "relative_position_index")
    params = sum(int(t.numel()) for k, t in state.items() if not k.endswith(buffer_suffixes))
    buffers = sum(int(t.numel()) for k, t in state.items() if k.endswith(buffer_suffixes))
    meta = {k: v for k, v in loaded.meta.items() if k != "cfg"}
    if "cfg" in loaded.meta:
        meta["cfg"] = f"<{len(loaded.meta['cfg'])} characters of mmengine config text>"
    info: dict[str, Any] = {
        "file": str(Path(path).resolve()),
        "size_bytes": Path(path).stat().st_size,
        "sha256": loaded.sha256,
        "format": loaded.source_format,
        "variant": loaded.cfg.name,
        "backbone": loaded.cfg.backbone,
        "embed_dim": loaded.cfg.embed_dim,
        "tensors": len(state),
        "parameters": params,
        "buffer_values": buffers,
        "random_weights": is_random(loaded.meta),
        "training_data": training.to_dict() if (training := training_data(loaded.meta)) else None,
        "meta": meta,
    }
    gamma = state.get("gamma")
    if gamma is not None:
        g = gamma.float()
        info["gamma"] = {"mean": float(g.mean()), "abs_mean": float(g.abs().mean()), "min": float(g.min()),
                         "max": float(g.max()), "note": "context-decoder scale; initialised to 1e-4"}
    return info


def _info(args: argparse.Namespace) -> int:
    info = weights_summary(args.file, args.variant)
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2, sort_keys=True) + "\n")
        return 0
    lines = [
        f"file        {info['file']} ({info['size_bytes'] / 1e6:.1f} MB)",
        f"sha256      {info['sha256']}",
        f"format      {info['format']}",
        f"variant     {info['variant']} (backbone {info['backbone']}, embed dim {info['embed_dim']})",
        f"parameters  {info['parameters']:,} in {info['tensors']} tensors",
    ]
    if info["random_weights"]:
        lines.append(f"WARNING     {RANDOM_WARNING}")
    td = info["training_data"]
    if td is None:
        lines.append("trained on  unknown (no training GSD: detection cannot check the scene's scale; "
                     "set one with `weights convert --train-gsd M`)")
    else:
        gsd = f"{td['gsd_m']:g} m/px" if td["gsd_m"] is not None else "unknown or varying GSD"
        lines.append(f"trained on  {td['dataset'] or 'unnamed imagery'} at {gsd} (from {td['source']})")
    if "gamma" in info:
        g = info["gamma"]
        lines.append(f"gamma       mean {g['mean']:.4g}, |mean| {g['abs_mean']:.4g}, min {g['min']:.4g}, "
                     f"max {g['max']:.4g}")
    for key, value in sorted(info["meta"].items()):
        lines.append(f"meta.{key:<7} {json.dumps(value)[:200]}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _make_seeded(args: argparse.Namespace) -> int:
    from changeclip.model.config import get_preset
    from changeclip.weights.native import save_weights
    from changeclip.weights.seeded import seeded_state_dict

    out = _output(args.output, args.overwrite)
    cfg = get_preset(args.preset)
    meta = {"source": "seeded", "seed": args.seed, "random": True, "warning": RANDOM_WARNING}
    save_weights(seeded_state_dict(cfg, seed=args.seed), cfg, out, meta=meta)
    sys.stdout.write(f"wrote {RANDOM_WARNING.split(':')[0]} ({cfg.name}, seed {args.seed}) to {out}\n")
    return 0


def _from_clip(args: argparse.Namespace) -> int:
    from changeclip.model.config import get_preset
    from changeclip.weights import file_sha256
    from changeclip.weights.clip_init import changeclip_state_from_clip
    from changeclip.weights.native import save_weights

    out = _output(args.output, args.overwrite)
    cfg = None if args.variant == "auto" else get_preset(args.variant)
    cfg, state, counts = changeclip_state_from_clip(args.clip, cfg, seed=args.seed)
    meta = {"source": "clip-init", "clip_file": Path(args.clip).name, "clip_sha256": file_sha256(args.clip),
            "seed": args.seed, "counts": counts,
            "warning": "CLIP towers only; the change-detection parts are untrained"}
    save_weights(state, cfg, out, meta=meta)
    sys.stdout.write(f"wrote {cfg.name} CLIP initialisation ({counts['copied']} tensors from CLIP) to {out}\n")
    return 0
