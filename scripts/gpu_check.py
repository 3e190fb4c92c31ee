"""GPU numerics check: full-size ChangeCLIP on CUDA (fp32 / bf16 / fp16) against CPU fp32.

Builds both full variants (RN50, ViT-B/16) with the parity kit's seeded weights, runs the same
tile pairs through :class:`changeclip.inference.predictor.ChangeCLIPPredictor` on the CPU in
fp32 (the reference) and on CUDA in each precision, and prints relative errors of the logits
and absolute errors of the change probabilities, plus the share of pixels whose argmax
(change / no change) differs. If the parity kit is found (``../shared/parity`` or
``$CHANGECLIP_PARITY_DIR``), the CUDA logits on the kit's input are also compared with the
official implementation's reference logits.

Not part of the test suite. Usage (on a machine with CUDA)::

    .venv/bin/python scripts/gpu_check.py [--size 256] [--batch 2] [--variants rn50 vit-b-16]

Exit status: 0 = ran (read the table), 2 = no CUDA device here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TAGS_A = ["building", "road", "tree", "bare land", "parking lot", "dense residential", "cars",
          "impermeable surface", "park"]


def _pairs(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random 'aerial-like' RGB tile pairs, 0..255, with a changed square."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 3, size // 16, size // 16)).astype(np.float32) * 255
    a = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bilinear").numpy()
    a = np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.float32)
    b = np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.float32)
    q = size // 4
    b[:, :, q:3 * q, q:3 * q] = 255 - b[:, :, q:3 * q, q:3 * q]
    return a, b


def _rel(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(x - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def _softmax1(logits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(logits).float().softmax(dim=1)[:, 1].numpy()


def _kit_check(lm: object, variant: str, parity: Path) -> float | None:
    """Relative error of CUDA logits vs the kit's reference on the kit's (normalised) input."""
    from changeclip.model.prompts import build_prompts, tokenize

    name = {"rn50": "full_rn50_s0_256.npz", "vit-b-16": "full_vit_s0_256.npz"}[variant]
    path = parity / name
    if not path.is_file():
        return None
    ref = np.load(path)
    tokens = tokenize(list(build_prompts(TAGS_A)))[None].to(lm.device)  # official quirk: B uses A's tags
    x = torch.from_numpy(ref["input"]).to(lm.device)
    with torch.inference_mode(), lm.autocast():
        out = lm.model.forward_tokens(x, tokens, tokens).float().cpu().numpy()
    return _rel(out, ref["logits"])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="tile size in px (multiple of 32)")
    parser.add_argument("--batch", type=int, default=2, help="tile pairs")
    parser.add_argument("--variants", nargs="+", default=["rn50", "vit-b-16"], choices=["rn50", "vit-b-16"])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for the reference (0 = torch default)")
    parser.add_argument("--device", default="cuda:0",
                        help="device under test (default cuda:0; 'cpu' only smoke-tests this script)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from changeclip.inference.devices import cuda_available, list_devices, resolve_device, resolve_precision
    from changeclip.inference.predictor import ChangeCLIPPredictor, load_model
    from changeclip.model import PRESETS
    from changeclip.weights import LoadedWeights
    from changeclip.weights.seeded import seeded_state_dict

    dev = args.device
    if dev.startswith("cuda") and not cuda_available():
        print(f"gpu_check: no CUDA device is available (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda or 'none'}); run this script on a machine with an NVIDIA GPU.", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = dev.startswith("cuda")
    gpu = [d for d in list_devices() if d["id"] == (dev if ":" in dev or not on_gpu else "cuda:0")][0]
    if on_gpu:
        print(f"device: {gpu['name']} ({gpu['memory_total_bytes'] / 2**30:.1f} GiB, capability {gpu['capability']}, "
              f"bf16 {'yes' if gpu['bf16'] else 'no'}); torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        print(f"device: CPU only ({gpu['name']}): smoke test of the script, not a GPU check")
    parity_env = os.environ.get("CHANGECLIP_PARITY_DIR")
    parity = Path(parity_env) if parity_env else REPO.parent / "shared" / "parity"
    before, after = _pairs(args.batch, args.size)
    precisions = ["fp32"] + ([p for p in ("bf16", "fp16") if p != "bf16" or gpu["bf16"]] if on_gpu else ["bf16"])
    header = (f"{'variant':<9} {'run':<22} {'logits rel.err':>14} {'prob max abs':>12} {'prob mean abs':>13} "
              f"{'argmax differs':>14} {'vs kit rel.err':>14} {'time s':>7}")
    rows = []
    for variant in args.variants:
        cfg = PRESETS[variant]
        weights = LoadedWeights(cfg=cfg, state_dict=seeded_state_dict(cfg, seed=0), source_format="native",
                                sha256="seeded-0", meta={"source": "seeded", "random": True}, path=f"seeded:{variant}")
        cpu = load_model(weights, device="cpu", precision="fp32")
        t0 = time.perf_counter()
        ref = ChangeCLIPPredictor(cpu, "words", ", ".join(TAGS_A)).predict_logits(before, after)
        cpu_s = time.perf_counter() - t0
        kit_cpu = _kit_check(cpu, variant, parity)
        rows.append((variant, "cpu fp32 (reference)", 0.0, 0.0, 0.0, 0.0, kit_cpu, cpu_s))
        del cpu
        ref_p = _softmax1(ref)
        ref_cls = ref.argmax(axis=1)
        runs = ([("fp32", False), ("fp32", True)] if on_gpu else [("fp32", False)]) + [(p, True) for p in precisions[1:]]
        for prec, tf32 in runs:
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            lm = load_model(weights, device=dev, precision=resolve_precision(prec, resolve_device(dev)))
            pred = ChangeCLIPPredictor(lm, "words", ", ".join(TAGS_A))
            pred.predict_logits(before[:1], after[:1])  # warm-up (cuDNN autotune, allocations)
            _sync(dev)
            t0 = time.perf_counter()
            out = pred.predict_logits(before, after)
            _sync(dev)
            secs = time.perf_counter() - t0
            p = _softmax1(out)
            label = f"{dev.split(':')[0]} {prec}" + (" (tf32 on)" if prec == "fp32" and tf32 else "")
            rows.append((variant, label, _rel(out, ref), float(np.abs(p - ref_p).max()),
                         float(np.abs(p - ref_p).mean()), float((out.argmax(axis=1) != ref_cls).mean()),
                         _kit_check(lm, variant, parity), secs))
            del lm, pred
            if on_gpu:
                torch.cuda.empty_cache()
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"tiles: {args.batch} pairs of {args.size}x{args.size}, prompt mode words (the kit's A tags), "
          f"seeded random weights")
    print(header)
    print("-" * len(header))
    for variant, label, rel, pmax, pmean, arg, kit, secs in rows:
        kit_s = f"{kit:.2e}" if kit is not None else "n/a"
        print(f"{variant:<9} {label:<22} {rel:>14.2e} {pmax:>12.2e} {pmean:>13.2e} {arg:>13.4%} {kit_s:>14} "
              f"{secs:>7.2f}")
    print("logits rel.err = max|x - cpu| / max|cpu|; the parity bar for fp32 is 1e-4. "
          "'vs kit' uses the official reference logits (CPU fp32, 1 thread).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
