"""Write the mmengine checkpoint fixtures of tests/backend/weights/fixtures/mmengine/ with real mmengine.

The released ChangeCLIP checkpoints were written by mmengine's ``CheckpointHook`` (the authors'
log shows mmengine 0.7.4). To test the safe loader against exactly what mmengine pickles, this
script installs each mmengine version below into a throw-away folder (``pip install --target``,
never into the project's virtual environment), then, with that mmengine importable, trains a
toy network for a few iterations with a real ``Runner`` (AdamW, a LinearLR + PolyLR schedule, a
validation loop and ``CheckpointHook(save_best="mIoU")``) and keeps what the hook wrote:

* ``hook-<version>-best.pth``: the best checkpoint exactly as ``CheckpointHook`` saved it (meta,
  toy state dict, real ``MessageHub`` state with ``HistoryBuffer`` objects; like the released
  ``best_mIoU_iter_*.pth`` it has no optimizer state);
* ``hook-<version>-iter.pth``: the periodic checkpoint of the same run, with the optimizer
  (AdamW moments) and parameter scheduler states;
* ``hook-<version>-<best|iter>.json``: what a trusted ``torch.load`` of it (mmengine importable) finds: every
  state-dict tensor's dtype, shape and SHA-256, the meta fields, and the pickle globals used;
* ``configdict-<version>.pth``: the periodic checkpoint's state dict with a real ``ConfigDict``
  (the model config) in ``meta``;
* ``template-<version>-<rn50|vit>.pth``: the periodic checkpoint re-saved with mmengine's own
  ``save_checkpoint``, its ``meta["cfg"]`` the ``pretty_text`` of a ChangeCLIP-like config
  (LEVIR-CD data root, the variant's backbone type) and ``state_dict`` moved last and emptied:
  the tests splice full ChangeCLIP state dicts (tiny or full size) into it, see
  tests/backend/weights/mmengine_checkpoints.py.

Run it from the repository root with the project's Python (torch must be importable):

    .venv/bin/python scripts/make_mmengine_fixtures.py [--workdir /tmp/mmengine-fixtures]

It needs PyPI access; the committed fixtures mean the test suite itself never needs mmengine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickletools
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "backend" / "weights" / "fixtures" / "mmengine"

VERSIONS: dict[str, list[str]] = {
    # mmengine 0.7.4's Config.pretty_text calls yapf.FormatCode(verify=...), removed in yapf 0.40.2
    "0.7.4": ["mmengine==0.7.4", "yapf==0.32.0"],
    "0.10.7": ["mmengine==0.10.7", "yapf==0.43.0", "platformdirs==4.3.6"],
}
COMMON = ["addict==2.4.0", "termcolor==2.4.0", "opencv-python-headless==4.8.1.78"]
"""mmengine's import-time dependencies missing from the project environment (numpy, torch,
pyyaml, rich, matplotlib are used from it; --no-deps keeps pip from touching them)."""

BACKBONES = {"rn50": ("CLIPResNetWithAttention", dict(layers=[3, 4, 6, 3], output_dim=1024, input_resolution=512)),
             "vit": ("CLIPVisionTransformer", dict(patch_size=16, width=768, layers=12, output_dim=512,
                                                   input_resolution=512))}


def install(version: str, workdir: Path) -> Path:
    """``pip install --target`` mmengine ``version`` and its missing dependencies; returns the folder."""
    target = workdir / f"mmengine-{version}"
    if not (target / "mmengine").is_dir():
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        *VERSIONS[version], *COMMON], check=True)
    return target


def changeclip_config_dict(variant: str) -> dict:
    """A ChangeCLIP-like mmseg config (our own wording of its shape) for ``meta["cfg"]``."""
    backbone_type, backbone_args = BACKBONES[variant]
    data_root = "data/LEVIR-CD/cut_data"
    return dict(
        dataset_type="LEVIRCDDataset",
        data_root=data_root,
        crop_size=(256, 256),
        norm_cfg=dict(type="SyncBN", requires_grad=True),
        model=dict(
            type="ChangeCLIP",
            backbone=dict(type=backbone_type, style="pytorch", **backbone_args),
            text_encoder=dict(type="CLIPTextContextEncoder", context_length=77, embed_dim=1024, transformer_width=512),
            context_decoder=dict(type="ContextDecoder", transformer_width=256, transformer_heads=4),
            decode_head=dict(type="SwinTextDecoder", num_classes=2, loss_decode=dict(type="CrossEntropyLoss")),
            class_names=["remote sensing images", "remote sensing images change area"],
        ),
        train_dataloader=dict(batch_size=8, num_workers=4,
                              dataset=dict(type="LEVIRCDDataset", data_root=data_root,
                                           data_prefix=dict(seg_map_path="train/label", img_path_from="train/A",
                                                            img_path_to="train/B"))),
        optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=0.0001, weight_decay=0.01)),
        param_scheduler=[dict(type="LinearLR", start_factor=1e-06, by_epoch=False, begin=0, end=1500),
                         dict(type="PolyLR", power=1.0, begin=1500, end=40000, eta_min=0.0, by_epoch=False)],
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=40000, val_interval=1000),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=1000,
                                           save_best="mIoU")),
        work_dir="./work_dirs/changeclip_levir",
    )


def generate(version: str, out: Path) -> None:
    """Train the toy network with a real Runner and write this version's fixtures (mmengine importable)."""
    import mmengine
    import torch
    from mmengine.config import Config
    from mmengine.evaluator import BaseMetric
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from mmengine.runner.checkpoint import save_checkpoint
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    if mmengine.__version__ != version:
        raise SystemExit(f"expected mmengine {version}, imported {mmengine.__version__} from {mmengine.__file__}")

    class ToyChangeNet(BaseModel):
        """Six-channel input (the two dates), float32/float64/int64 buffers like real networks."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(6, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.head = nn.Conv2d(4, 2, 1)
            self.register_buffer("gamma_init", torch.full((2,), 1e-4, dtype=torch.float64))

        def forward(self, inputs, labels=None, mode="tensor"):  # noqa: ANN001, ANN201 - mmengine's protocol
            logits = self.head(torch.relu(self.bn(self.conv(inputs))))
            if mode == "loss":
                return dict(loss=F.cross_entropy(logits, labels))
            if mode == "predict":
                return list(zip(logits.argmax(1), labels, strict=True))
            return logits

    class ToyLevir(torch.utils.data.Dataset):
        metainfo = dict(classes=("unchanged", "changed"), palette=[[0, 0, 0], [255, 255, 255]])

        def __init__(self) -> None:
            gen = torch.Generator().manual_seed(0)
            self.items = [dict(inputs=torch.randn(6, 8, 8, generator=gen),
                               labels=(torch.rand(8, 8, generator=gen) > 0.5).long()) for _ in range(8)]

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, index: int) -> dict:
            return self.items[index]

    class ToyIoU(BaseMetric):
        def process(self, data_batch, data_samples) -> None:  # noqa: ANN001
            for pred, label in data_samples:
                inter = ((pred == 1) & (label == 1)).sum().item()
                union = ((pred == 1) | (label == 1)).sum().item()
                self.results.append((inter, union))

        def compute_metrics(self, results) -> dict:  # noqa: ANN001
            inter, union = (sum(x) for x in zip(*results, strict=True))
            return dict(mIoU=100.0 * inter / max(union, 1))

    out.mkdir(parents=True, exist_ok=True)
    loader = dict(dataset=ToyLevir(), sampler=dict(type="DefaultSampler", shuffle=False), batch_size=4,
                  collate_fn=dict(type="default_collate"))
    with tempfile.TemporaryDirectory() as work:
        runner = Runner(
            model=ToyChangeNet(), work_dir=work, experiment_name="changeclip_levir",
            train_dataloader=loader, val_dataloader=loader, val_evaluator=[ToyIoU()],
            train_cfg=dict(by_epoch=False, max_iters=4, val_interval=2), val_cfg=dict(),
            optim_wrapper=dict(optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.01)),
            param_scheduler=[dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=2),
                             dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=2, end=4)],
            default_hooks=dict(checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=2, save_best="mIoU"),
                               logger=dict(type="LoggerHook", interval=1)),
            randomness=dict(seed=0), cfg=Config(changeclip_config_dict("rn50")),
        )
        runner.train()
        # the best checkpoint is saved without optimizer and scheduler states (as the released
        # best_mIoU_iter_*.pth); the periodic one has them
        written = {"best": sorted(Path(work).rglob("best_mIoU_iter_*.pth")),
                   "iter": sorted(Path(work).rglob("iter_4.pth"))}
        for kind, found in written.items():
            if len(found) != 1:
                raise SystemExit(f"expected one {kind} checkpoint in {work}, found {found}")
            shutil.copyfile(found[0], out / f"hook-{version}-{kind}.pth")

    for kind, found in written.items():
        hook_file = out / f"hook-{version}-{kind}.pth"
        checkpoint = torch.load(hook_file, map_location="cpu", weights_only=False)  # our own file: trusted
        expected = {
            "mmengine_version": version,
            "torch_version": torch.__version__,
            "source": found[0].name,
            "keys": list(checkpoint),
            "state_dict_keys": list(checkpoint["state_dict"]),  # "state_dict" below is sorted by json
            "state_dict": {key: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                                 "sha256": hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()}
                           for key, t in checkpoint["state_dict"].items()},
            "meta": {k: v for k, v in checkpoint["meta"].items() if isinstance(v, int | str) and k != "cfg"},
            "classes": list(checkpoint["meta"]["dataset_meta"]["classes"]),
            "log_scalars": sorted(checkpoint["message_hub"]["log_scalars"]),
            "runtime_info": sorted(checkpoint["message_hub"]["runtime_info"]),
            "optimizer_state_tensors": sum(len(s) for s in checkpoint.get("optimizer", {}).get("state", {}).values()),
            "param_schedulers": [sorted(s) for s in checkpoint.get("param_schedulers", [])],
            "globals": pickle_globals(hook_file),
        }
        (out / f"hook-{version}-{kind}.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")

    for variant in BACKBONES:
        checkpoint = torch.load(out / f"hook-{version}-iter.pth", map_location="cpu", weights_only=False)
        cfg_text = Config(changeclip_config_dict(variant)).pretty_text
        template = OrderedDict((k, v) for k, v in checkpoint.items() if k != "state_dict")
        template["meta"] = dict(checkpoint["meta"], cfg=cfg_text)
        template["message_hub"]["runtime_info"]["cfg"] = cfg_text  # the Runner keeps a copy there too
        empty = OrderedDict()
        empty._metadata = OrderedDict()  # type: ignore[attr-defined] - as nn.Module.state_dict() sets it
        template["state_dict"] = empty
        save_checkpoint(dict(template), str(out / f"template-{version}-{variant}.pth"))
    # a ConfigDict in meta (mmengine pickles it as ConfigDict(dict)): not what CheckpointHook writes
    # (it stores the config as text), but what a hand-saved checkpoint may hold
    model_cfg = Config(changeclip_config_dict("rn50")).model
    save_checkpoint({"meta": {"cfg": Config(changeclip_config_dict("rn50")).pretty_text, "model": model_cfg},
                     "state_dict": checkpoint["state_dict"]}, str(out / f"configdict-{version}.pth"))
    verify_splice(version, out)
    print(f"mmengine {version}: wrote hook-{version}-best/iter.pth and templates to {out}")


def verify_splice(version: str, out: Path) -> None:
    """Check that the tests' splicing makes files real mmengine reads back exactly (trusted torch.load)."""
    import torch

    sys.path.insert(0, str(REPO / "tests" / "backend" / "weights"))
    from mmengine_checkpoints import splice_state_dict

    from changeclip.model.config import PRESETS
    from changeclip.weights.seeded import seeded_state_dict

    for variant, family in (("tiny-rn50", "rn50"), ("tiny-vit", "vit")):
        state = seeded_state_dict(PRESETS[variant], seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            spliced = splice_state_dict(out / f"template-{version}-{family}.pth", state, Path(tmp) / "spliced.pth")
            loaded = torch.load(spliced, map_location="cpu", weights_only=False)
        hub = loaded["message_hub"]["log_scalars"]["train/loss"]
        if type(hub).__module__ != "mmengine.logging.history_buffer" or not isinstance(hub.mean(), float):
            raise SystemExit(f"spliced {variant}: the message hub did not come back as real HistoryBuffers")
        if list(loaded["state_dict"]) != list(state) or not all(
                torch.equal(loaded["state_dict"][k], v) and loaded["state_dict"][k].dtype == v.dtype
                for k, v in state.items()):
            raise SystemExit(f"spliced {variant}: torch.load gives a different state dict")
    print(f"mmengine {version}: spliced tiny checkpoints read back identically by torch.load with mmengine")


def pickle_globals(path: Path) -> list[str]:
    """The ``module name`` globals the checkpoint's data.pkl refers to (for review and the tests)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    found = {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    return sorted(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the throw-away mmengine installs (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"fixture folder (default {OUT})")
    parser.add_argument("--generate", metavar="VERSION", help=argparse.SUPPRESS)  # internal: child process
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.out)
        return 0
    with tempfile.TemporaryDirectory(prefix="mmengine-fixtures-") as tmp:
        workdir = args.workdir or Path(tmp)
        for version in VERSIONS:
            target = install(version, workdir)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(REPO / "backend")]))
            subprocess.run([sys.executable, __file__, "--generate", version, "--out", str(args.out)], env=env,
                           check=True, cwd=tempfile.gettempdir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
