"""The recipe pieces without a training run: schedule, parameter groups, defaults, batch plan,
augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from changeclip.errors import InputError
from changeclip.model import build_model
from changeclip.model.config import PRESETS
from changeclip.training.config import TrainConfig, resolve_schedule
from changeclip.training.data import DistributedBatchPlan, augment, photometric
from changeclip.training.recipe import lr_factor, param_groups


def test_warmup_then_poly_decay_ends_at_the_last_iteration() -> None:
    iters, warmup = 30_000, 1500
    assert lr_factor(0, iters, warmup) == pytest.approx(1e-6)
    assert lr_factor(750, iters, warmup) == pytest.approx(0.5, abs=1e-6)
    assert lr_factor(1500, iters, warmup) == 1.0
    # linear decay: half-way through the decay phase the factor is one half ...
    assert lr_factor(1500 + 14_250, iters, warmup) == pytest.approx(0.5)
    # ... and the last step has the smallest positive factor: 0 would be reached one step later
    assert lr_factor(iters - 1, iters, warmup) == pytest.approx(1 / (iters - warmup))
    assert lr_factor(iters, iters, warmup) == 0.0
    # the official 'open' branch bug (decay ending at 20k) is not reproduced
    assert lr_factor(20_000, iters, warmup) > 0.3


def test_no_weight_decay_on_norms_and_position_tables_only() -> None:
    model = build_model(PRESETS["tiny-vit"])
    groups = param_groups(model, 1e-4, 0.01, encoder_lr_mult=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert len(by_name) == sum(1 for _ in model.parameters())  # every parameter in exactly one group
    no_decay = {n for n, g in by_name.items() if g["weight_decay"] == 0.0}
    assert no_decay == {n for n in by_name
                        if any(k in n for k in ("norm", "relative_position_bias_table", "absolute_pos_embed"))}
    assert any("norm" in n for n in no_decay)
    # CLIP's ln_* layers are decayed, as in the official paramwise_cfg
    assert by_name["backbone.ln_pre.weight"]["weight_decay"] == 0.01
    assert by_name["backbone.conv1.weight"]["lr"] == pytest.approx(1e-5)  # the image encoder at x0.1
    assert by_name["decode_head.conv_seg.weight"]["lr"] == pytest.approx(1e-4)


def test_defaults_keep_the_official_effective_batch() -> None:
    cfg = TrainConfig(datasets=["x"], run_dir="r", variant="rn50", init="scratch")
    s = resolve_schedule(cfg, train_tiles=16_020)
    assert (s.batch_size, s.accumulate, s.global_batch, s.iters, s.warmup, s.lr) == (20, 2, 40, 30_000, 1500, 1e-4)
    s2 = resolve_schedule(cfg, train_tiles=16_020, world_size=2)  # the official 2 GPUs x 20
    assert (s2.batch_size, s2.accumulate, s2.global_batch) == (20, 1, 40)
    vit = resolve_schedule(TrainConfig(["x"], "r", "vit-b-16", "scratch", epochs=2), train_tiles=1000)
    assert (vit.global_batch, vit.iters) == (24, 84)  # ceil(2 * 1000 / 24)
    assert vit.warmup == 8  # the 1500-iteration warm-up is capped at a tenth of a short run
    with pytest.raises(InputError, match="only 3"):
        resolve_schedule(TrainConfig(["x"], "r", "tiny-rn50", "scratch", batch_size=4), train_tiles=3)


def test_global_batches_do_not_depend_on_how_they_are_split() -> None:
    """2 processes x 1 micro-batch and 1 process x 2 accumulated micro-batches see the same tiles."""
    single = DistributedBatchPlan(7, 2, accumulate=2, world_size=1, rank=0, seed=3)
    ranks = [DistributedBatchPlan(7, 2, accumulate=1, world_size=2, rank=r, seed=3) for r in (0, 1)]
    for step in range(5):
        assert single.chunk(step, single.chunk_of(0)) == ranks[0].chunk(step, ranks[0].chunk_of(0))
        assert single.chunk(step, single.chunk_of(1)) == ranks[1].chunk(step, ranks[1].chunk_of(0))
        assert single.torch_seed(step, 1) == ranks[1].torch_seed(step, 0)
    # the stream is a sequence of permutations: every tile once per epoch
    first_epoch = [i for step in range(2) for c in range(2) for i, _ in single.chunk(step, c)][:7]
    assert sorted(first_epoch) == list(range(7))
    # a plan started at step 3 (a resume) yields what the full plan yields from step 3 on
    it_full, it_resumed = iter(single), iter(DistributedBatchPlan(7, 2, 2, 1, 0, seed=3, start_step=3))
    full = [next(it_full) for _ in range(10)]
    assert full[6:10] == [next(it_resumed) for _ in range(4)]


def test_augmentations_are_joint_and_seeded() -> None:
    gen = torch.Generator().manual_seed(0)
    label = (torch.rand(64, 64, generator=gen) > 0.7).long()
    pattern = label.float() * 200 + 20
    images = pattern.expand(6, 64, 64).clone()
    outs = []
    for seed in range(12):
        img, lab = augment(images, label, 32, np.random.default_rng([5, seed]))
        again = augment(images, label, 32, np.random.default_rng([5, seed]))
        assert torch.equal(img, again[0]) and torch.equal(lab, again[1])  # a pure function of the seed
        assert img.shape == (6, 32, 32) and lab.shape == (32, 32)
        assert set(lab.unique().tolist()) <= {0, 1, 255}
        outs.append(lab)
        # geometry is shared: where the label says change the before image is bright, where it
        # says no change it is dark (photometric changes shift values but keep 20 vs 220 apart)
        inner = lab[2:-2, 2:-2]
        a = img[0, 2:-2, 2:-2]
        sharp = (inner != 255)
        assert (a[sharp & (inner == 1)].mean() > a[sharp & (inner == 0)].mean() + 80) or not (inner == 1).any()
    assert len({tuple(o.flatten().tolist()) for o in outs}) > 6  # the seeds give different augmentations


def test_photometric_is_drawn_per_date() -> None:
    img = torch.full((3, 8, 8), 100.0)
    img[1] = 150.0
    out = [photometric(img.clone(), np.random.default_rng(s)) for s in range(20)]
    assert all(0 <= o.min() and o.max() <= 255 for o in out)
    assert len({round(float(o.mean()), 3) for o in out}) > 10
