"""DistributedDataParallel on the CPU (gloo): 2 processes against 1 process that accumulates the
same two micro-batches, and the measurement behind ``find_unused_parameters=False``.

What is compared, and why it must match: the trainer's batch plan gives process ``r`` of a
2-process run (batch B, accumulate 1) exactly the tiles, augmentations and dropout/drop-path
draws that micro-batch ``r`` of a 1-process run with batch B and accumulate 2 gets. Train-mode
BatchNorm normalises each replica's micro-batch with its own statistics, as the accumulating
process does for each micro-batch, so every gradient is the same function of the same inputs;
DDP averages the two replicas' gradients, the accumulating process sums the two halves of
loss / 2. The **parameters** after the optimizer steps are therefore equal up to float rounding
of the summation order (compared to 1e-5, while training moves them by ~1e-3 per step), and the
two replicas hold **bit-identical** parameters (both apply the same all-reduced gradients).

BatchNorm **running statistics** (buffers) are not compared with the single process: they do not
enter train-mode computations, and by construction they differ: DDP (broadcast_buffers, as in
mmengine) copies rank 0's running statistics to every replica before each forward, so the saved
ones have seen rank 0's micro-batches only, while the accumulating process updates them once per
micro-batch. The test checks that rank 0's buffers are the ones written to last.safetensors.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from changeclip.model import build_model
from changeclip.model.config import PRESETS
from changeclip.training import TrainConfig, train
from changeclip.training.distributed import FIND_UNUSED_PARAMETERS
from changeclip.training.loop import StepModule
from changeclip.training.prompting import TrainPrompts
from changeclip.training.recipe import apply_freeze

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked", "relative_position_index")


def _cfg(ds: Path, run: Path, **kw) -> TrainConfig:
    base = dict(datasets=[str(ds)], run_dir=str(run), variant="tiny-rn50", init="scratch", iters=3, batch_size=2,
                accumulate=1, lr=1e-3, warmup=1, crop=32, workers=0, val_every=3, device="cpu", log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, port: int, ds: str, run: str, out: str) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        from changeclip.training import distributed as dd
        from changeclip.training.loop import Trainer

        ctx = dd.init_from_env("cpu", timeout_s=240)
        try:
            trainer = Trainer(_cfg(Path(ds), Path(run)), ctx, None, None)
            trainer.prepare()
            result = trainer.run()
            torch.save({"state": trainer.net.state_dict(), "status": result.status,
                        "schedule": trainer.schedule.to_dict()}, Path(out) / f"rank{rank}.pt")
        finally:
            dd.cleanup(ctx)
    except BaseException:  # report in the parent, which asserts on the exit code
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def test_ddp_replicas_equal_a_single_process_accumulating_their_micro_batches(make_dataset, tmp_path: Path) -> None:
    ds = make_dataset(train=4, val=2)
    # spawn, not fork: earlier tests of the same pytest process start thread pools (OpenMP, OpenVINO's
    # TBB), and a forked child that uses them deadlocks (seen in the full suite: both ranks hung).
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, str(ds), str(tmp_path / "ddp"), str(tmp_path)))
             for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0, 0], codes
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["status"] == r1["status"] == "finished"
    assert (r0["schedule"]["world_size"], r0["schedule"]["accumulate"], r0["schedule"]["global_batch"]) == (2, 1, 4)

    single = train(_cfg(ds, tmp_path / "single", accumulate=2))
    assert single.status == "finished"
    one = load_file(str(tmp_path / "single" / "last.safetensors"))
    params = [k for k in one if not k.endswith(BUFFER_SUFFIXES)]
    assert len(params) > 100
    # replicas: bit-identical parameters
    assert [k for k in params if not torch.equal(r0["state"][k], r1["state"][k])] == []
    # DDP == accumulation, up to the summation order of the gradient average
    diffs = {k: float((r0["state"][k].float() - one[k].float()).abs().max()) for k in params}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < 1e-5, (worst, diffs[worst])
    init = build_model(PRESETS["tiny-rn50"]).state_dict()  # any init: training moves weights by ~lr per step
    assert max(float((one[k] - init[k]).abs().max()) for k in params) > 1e-3
    # rank 0 wrote the run folder, with its own buffers
    written = load_file(str(tmp_path / "ddp" / "last.safetensors"))
    assert all(torch.equal(written[k], r0["state"][k]) for k in written)
    # the validation confusion matrix is summed over both processes' halves of the val split
    assert single.last_val is not None and r0["status"] == "finished"


@pytest.mark.parametrize("variant", ["tiny-rn50", "tiny-vit"])
@pytest.mark.parametrize("mode", ["none", "auto"])
def test_every_parameter_gets_a_gradient(variant: str, mode: str) -> None:
    """The measurement behind find_unused_parameters=False: one step leaves no trainable parameter
    without a gradient (also with frozen parts, which DDP never registers)."""
    assert FIND_UNUSED_PARAMETERS is False
    torch.manual_seed(0)
    for freeze in ("none", "backbone+text"):
        net = build_model(PRESETS[variant]).train()
        apply_freeze(net, freeze)
        tags = {"t0": {"A": ["building", "road"], "B": ["tree"]}, "t1": {"A": ["lake"], "B": ["lake", "farmland"]}}
        prompts = TrainPrompts(mode, "", tags if mode == "auto" else None)
        tokens, ia, ib = prompts.tokens(["t0", "t1"])
        logits = StepModule(net)(torch.randn(2, 6, 32, 32), tokens, ia, ib)
        logits.square().mean().backward()
        trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        assert trainable
        assert [n for n, p in trainable if p.grad is None] == []
        frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
        assert bool(frozen) == (freeze != "none")
