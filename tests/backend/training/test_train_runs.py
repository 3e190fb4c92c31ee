"""Real training runs on real LEVIR-CD tiles with the TINY networks on the CPU: overfitting, the run
folder, bit-identical determinism, resume == uninterrupted, SIGINT -> resumable checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from changeclip.cli import main
from changeclip.model.config import PRESETS
from changeclip.training import TrainConfig, train
from changeclip.training.checkpoint import load_state
from changeclip.training.start import seeded_init
from changeclip.weights import load_weights
from changeclip.weights.training_data import training_data


def _cfg(ds: Path, run: Path, **kw) -> TrainConfig:
    base = dict(datasets=[str(ds)], run_dir=str(run), variant="tiny-rn50", init="scratch", iters=4, batch_size=2,
                accumulate=2, lr=1e-3, warmup=1, crop=32, workers=0, val_every=4, device="cpu", log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def _same_tensors(a: Path, b: Path) -> list[str]:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    return [k for k in ta if not torch.equal(ta[k], tb[k])]


def test_tiny_network_overfits_real_tiles(make_dataset, tmp_path: Path) -> None:
    """4 real 32 px LEVIR-CD tiles, validated on themselves: change F1 > 0.9 within 80 iterations
    (CE + Dice, no augmentation: memorising, the opposite of what a real run wants)."""
    ds = make_dataset(train=4, val=4, val_same=True, size=32)
    run = tmp_path / "run"
    events: list[dict] = []
    result = train(_cfg(ds, run, iters=80, batch_size=4, accumulate=1, lr=3e-3, warmup=0, loss="ce+dice",
                        augment=False, val_every=20, log_every=10), progress_cb=events.append)
    assert result.status == "finished" and result.iteration == 80
    assert result.best is not None and result.best["f1"] > 0.9, result.best
    # the run folder
    names = {p.name for p in run.iterdir()}
    assert {"best.safetensors", "last.safetensors", "state.pt", "metrics.jsonl", "config.json", "curves.png"} <= names
    assert not [n for n in names if ".tmp-" in n]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["kind"] == "step"] == list(range(10, 81, 10))
    vals = [r for r in rows if r["kind"] == "val"]
    assert [r["iteration"] for r in vals] == [20, 40, 60, 80]
    assert vals[-1]["per_class"]["no change"]["f1"] is not None and rows[-1]["kind"] == "end"
    # the best weights carry what detection and 'weights info' read
    best = load_weights(run / "best.safetensors", "tiny-rn50")
    assert best.meta["val_metrics"]["f1"] == pytest.approx(result.best["f1"])
    assert best.meta["iteration"] == result.best["iteration"]
    assert best.meta["recipe"]["lr"] == 3e-3 and best.meta["seed"] == 0 and len(best.meta["data_sha256"]) == 64
    td = training_data(best.meta)
    assert td is not None and (td.dataset, td.gsd_m) == ("LEVIR-CD", 0.5)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["schedule"]["global_batch"] == 4 and cfg["data"]["train_tiles"] == 4
    assert [e["event"] for e in events][:2] == ["start", "step"] and events[-1]["event"] == "end"


def test_same_seed_same_weights_and_resume_equals_uninterrupted(make_dataset, tmp_path: Path) -> None:
    """CPU determinism (bit-identical, whatever the number of data workers) and resume after N/2 == N."""
    ds = make_dataset(train=4, val=2)
    ref = train(_cfg(ds, tmp_path / "ref"))
    again = train(_cfg(ds, tmp_path / "again", workers=2))
    assert ref.status == again.status == "finished"
    assert _same_tensors(tmp_path / "ref" / "last.safetensors", tmp_path / "again" / "last.safetensors") == []
    trained = load_file(str(tmp_path / "ref" / "last.safetensors"))
    init = seeded_init(PRESETS["tiny-rn50"], 0)
    moved = [k for k, v in trained.items() if v.is_floating_point() and not torch.equal(v, init[k])]
    assert len(moved) > 100  # training changed the weights: equal files are not equal by default

    polls = []

    def cancel_after_two_steps() -> bool:
        polls.append(1)
        return len(polls) >= 2

    half = train(_cfg(ds, tmp_path / "resumed"), cancel_cb=cancel_after_two_steps)
    assert (half.status, half.iteration) == ("interrupted", 2)
    state = load_state(tmp_path / "resumed" / "state.pt")
    assert state["iteration"] == 2 and state["effective"] == {"batch_size": 2, "accumulate": 2}
    assert _same_tensors(tmp_path / "ref" / "last.safetensors", tmp_path / "resumed" / "last.safetensors")
    rest = train(_cfg(ds, tmp_path / "resumed", resume=True))
    assert (rest.status, rest.iteration) == ("finished", 4)
    assert _same_tensors(tmp_path / "ref" / "last.safetensors", tmp_path / "resumed" / "last.safetensors") == []
    assert rest.best == ref.best
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert kinds == ["step", "step", "interrupted", "resume", "step", "step", "val", "end"]


def test_sigint_saves_a_resumable_checkpoint(make_dataset, tmp_path: Path, repo_root: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_dataset(train=4, val=2)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root / "backend"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "changeclip", "train", str(ds), "-o", str(run), "--variant", "tiny-rn50", "--init",
           "scratch", "--iters", "1000", "--batch-size", "2", "--crop", "32", "--workers", "1", "--device", "cpu",
           "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line).get("event") == "step":  # 10 iterations done
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted at iteration" in err and "--resume" in err and "Traceback" not in err
    assert json.loads(out.splitlines()[-1])["status"] == "interrupted"
    state = load_state(run / "state.pt")
    assert 10 <= state["iteration"] < 1000
    assert load_weights(run / "last.safetensors").meta["iteration"] == state["iteration"]
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]

    # a resume that would silently change the run is refused with the reasons
    code = main(["train", "-o", str(run), "--resume", "--batch-size", "4", "--iters", "999", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--resume refused" in err
    assert "batch_size: 2 in the run, 4 now" in err and "iters: 1000 in the run, 999 now" in err
    other = make_dataset("other", train=3, val=1)
    code = main(["train", str(other), "-o", str(run), "--resume", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--resume refused" in err and "data_sha256: " in err
    assert load_state(run / "state.pt")["iteration"] == state["iteration"]  # untouched


def test_auto_prompts_tag_each_tile_once_and_validate_with_the_cache(make_dataset, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from changeclip.model.tagger import random_clip_state_dict

    clip = tmp_path / "tiny_clip.safetensors"
    save_file(random_clip_state_dict(seed=1), str(clip))  # a tiny random CLIP: tags are arbitrary but real
    ds = make_dataset(train=2, val=2)
    run = tmp_path / "run"
    result = train(_cfg(ds, run, iters=1, warmup=0, batch_size=2, accumulate=1, val_every=1, prompt_mode="auto",
                        prompt="roofs", tagger_weights=str(clip)))
    assert result.status == "finished" and result.last_val is not None
    tags = json.loads((run / "tags.json").read_text())
    assert len(tags) == 4 and all(len(v["A"]) == 9 and len(v["B"]) == 9 for v in tags.values())
    assert {k.split("/")[1] for k in tags} == {"train", "val"}
    meta = load_weights(run / "last.safetensors").meta
    assert (meta["prompt_mode"], meta["prompt"]) == ("auto", "roofs")


def test_out_of_memory_at_the_first_step_halves_the_batch(make_dataset, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from changeclip.training.loop import Trainer

    real = Trainer._micro
    seen: list[int] = []

    def micro(self, batch, step, m):  # the first micro-batch of batch 2 does not "fit"
        seen.append(len(batch["key"]))
        if len(batch["key"]) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, batch, step, m)

    monkeypatch.setattr(Trainer, "_micro", micro)
    ds = make_dataset(train=4, val=2)
    events: list[dict] = []
    result = train(_cfg(ds, tmp_path / "run", iters=1, warmup=0, batch_size=2, accumulate=1, val_every=1, crop=64),
                   progress_cb=events.append)
    assert result.status == "finished"
    assert result.notes == ["out of memory at the first step: retrying with batch 1 and accumulate 2 (same "
                            "effective batch of 2)"]
    assert [e for e in events if e["event"] == "note"][0]["message"] == result.notes[0]
    assert seen == [2, 1, 1]
    state = load_state(tmp_path / "run" / "state.pt")
    assert state["effective"] == {"batch_size": 1, "accumulate": 2}
    assert state["run"]["batch_size"] == 2 and state["run"]["global_batch"] == 2  # what a resume is checked on


def test_patience_stops_early_and_keeps_the_best(make_dataset, tmp_path: Path) -> None:
    """With a learning rate too small to change a prediction (and the BatchNorm backbone frozen),
    validation 2 cannot beat validation 1: --patience 1 stops the run there."""
    ds = make_dataset(train=2, val=2)
    run = tmp_path / "run"
    result = train(_cfg(ds, run, iters=6, batch_size=2, accumulate=1, lr=1e-12, val_every=1, patience=1,
                        freeze="backbone"))
    assert (result.status, result.iteration) == ("early-stopped", 2)
    assert result.best is not None and result.best["iteration"] == 1
    assert load_weights(run / "best.safetensors").meta["iteration"] == 1
    assert load_weights(run / "last.safetensors").meta["iteration"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["best"] for r in rows if r["kind"] == "val"] == [True, False]
    assert rows[-1] == {**rows[-1], "kind": "end", "status": "early-stopped", "iteration": 2}


def test_trains_on_what_dataset_from_folder_makes(data_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The contract end to end: 'changeclip dataset from-folder' on the LEVIR-CD sample, then train."""
    ds, run = tmp_path / "ds", tmp_path / "run"
    assert main(["dataset", "from-folder", str(data_dir / "LEVIR-CD" / "justchenhao_BIT_CD"), "-o", str(ds),
                 "--gsd", "0.5", "--train-dataset", "LEVIR-CD"]) == 0
    capsys.readouterr()  # the dataset summary
    code = main(["train", str(ds), "-o", str(run), "--variant", "tiny-vit", "--init", "scratch", "--iters", "1",
                 "--batch-size", "2", "--crop", "32", "--workers", "0", "--device", "cpu", "--json"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    result = json.loads(out[-1])
    assert result["event"] == "result" and result["status"] == "finished"
    val = [json.loads(line) for line in out if json.loads(line).get("event") == "val"]
    assert len(val) == 1 and val[0]["tp"] + val[0]["fp"] + val[0]["fn"] + val[0]["tn"] == 2 * 256 * 256
    meta = load_weights(run / "best.safetensors").meta
    assert (meta["train_dataset"], meta["train_gsd_m"]) == ("LEVIR-CD", 0.5)


def test_kill_9_leaves_the_previous_checkpoint_complete(make_dataset, tmp_path: Path, repo_root: Path) -> None:
    """SIGKILL while checkpoints are being written: every file is either the previous complete version
    or the new complete one, and --resume continues."""
    ds = make_dataset(train=4, val=2)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root / "backend"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "changeclip", "train", str(ds), "-o", str(run), "--variant", "tiny-vit", "--init",
           "scratch", "--iters", "1000", "--batch-size", "2", "--crop", "32", "--workers", "0", "--device", "cpu",
           "--val-every", "1", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert proc.stdout is not None
        checkpoints = 0
        for line in proc.stdout:
            event = json.loads(line)
            checkpoints += event.get("event") == "checkpoint"
            if checkpoints == 2 and event.get("event") == "val":  # the 3rd checkpoint is being written now
                proc.kill()
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    state = load_state(run / "state.pt")  # complete, whichever checkpoint it is
    assert state["iteration"] in (2, 3)
    last = load_weights(run / "last.safetensors")
    assert last.meta["iteration"] in (2, 3) and last.meta["iteration"] <= state["iteration"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kind"] == "val" and rows[-1]["iteration"] in (2, 3)
    result = train(_cfg(ds, run, variant="tiny-vit", iters=1000, batch_size=2, accumulate=None, val_every=1,
                        lr=None, warmup=None, resume=True, log_every=10),
                   cancel_cb=lambda: True)  # resume, do one more iteration, stop with a checkpoint
    assert (result.status, result.iteration) == ("interrupted", state["iteration"] + 1)
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]
