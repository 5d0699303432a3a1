"""The training loop: kill-and-resume exactness, DDP equals one process, safe checkpoints, NaN stop."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from encore.train.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# A self-contained run: a tiny encoder-decoder on a random copy task, so these tests exercise the
# loop itself (accumulation, checkpoints, resume, DDP) independently of the data layer.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    from encore import ModelConfig, EncoderDecoder
    from encore.data.sources import TaskSource
    from encore.train import TrainConfig, train

    out, steps, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    resume = "--resume" in sys.argv
    torch.manual_seed(0)
    config = ModelConfig.preset("encdec-tiny", vocab_size=64, d_model=64, n_heads=2, n_kv_heads=1, head_dim=32,
                                mlp_dim=128, n_encoder_layers=2, n_decoder_layers=1,
                                dropout=0.0 if "--no-dropout" in sys.argv else 0.1)
    model = EncoderDecoder(config)
    g = torch.Generator().manual_seed(1)
    examples = []
    for _ in range(48):
        n = int(torch.randint(3, 9, (1,), generator=g))
        x = torch.randint(3, 64, (n,), generator=g).tolist()
        examples.append({"source_ids": x, "target_ids": x[::-1]})

    def collate(batch):
        S = max(len(e["source_ids"]) for e in batch)
        T = max(len(e["target_ids"]) for e in batch) + 1
        ids = torch.zeros(len(batch), S, dtype=torch.long); mask = torch.zeros_like(ids)
        dec = torch.zeros(len(batch), T, dtype=torch.long); dmask = torch.zeros_like(dec)
        labels = torch.full((len(batch), T), -100)
        for i, e in enumerate(batch):
            x, y = e["source_ids"], e["target_ids"] + [2]
            ids[i, :len(x)] = torch.tensor(x); mask[i, :len(x)] = 1
            dec[i, :len(y)] = torch.tensor([1] + y[:-1]); dmask[i, :len(y)] = 1
            labels[i, :len(y)] = torch.tensor(y)
        return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec,
                "decoder_attention_mask": dmask, "labels": labels}

    def killer(step, model):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = TrainConfig(out_dir=out, max_steps=steps, batch_size=8, micro_batch_size=2, lr=0.02, save_every=2,
                      keep_last=2, resume=resume, seed=0, progress=False, fsdp="--fsdp" in sys.argv,
                      optimizer="adamw" if "--adamw" in sys.argv else "muon")
    train(model, cfg, TaskSource(examples, collate, seed=0), hooks=[killer])
    """
)


def free_port() -> int:
    """A port nothing listens on now (the OS picks it), so overlapping test runs do not collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(tmp_path: Path, *args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), *args]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(free_port()),
            str(script),
            *args,
        ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.mark.slow
def test_kill_and_resume_is_exact(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_script(tmp_path, str(full), "8", "0").returncode == 0
    proc = run_script(tmp_path, str(killed), "8", "5")
    assert proc.returncode == -9  # SIGKILL after step 5; the newest checkpoint is step 4
    assert latest_checkpoint(killed / "checkpoints").name == "step-4"
    assert max(losses(killed)) == 5
    proc = run_script(tmp_path, str(killed), "8", "0", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert losses(killed) == losses(full)  # bit-identical: data position, RNG (dropout), optimizer state
    assert [p.name for p in list_checkpoints(killed / "checkpoints")] == ["step-6", "step-8"]  # keep_last=2
    from encore import load

    a, b = load(full / "final").state_dict(), load(killed / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # and the same final weights


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # Without dropout: each rank draws its own dropout masks, so with dropout the two runs differ
    # by design (as they do in any DDP engine); everything else must match.
    assert run_script(tmp_path, str(one), "4", "0", "--no-dropout").returncode == 0
    proc = run_script(tmp_path, str(two), "4", "0", "--no-dropout", nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    l1, l2 = losses(one), losses(two)
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4]
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-4), step


@pytest.mark.slow
def test_two_process_fsdp_matches_one_process_and_resumes(tmp_path):
    """FSDP2 over 2 gloo processes (`--fsdp`), an encoder-decoder (its cross K/V are projected outside
    the sharded layer's forward): the losses of one process, checkpoints saved whole (loadable by
    `encore.load`: one process's weights), and a run killed after step 5 resumes from step 4 to the
    same losses. AdamW, whose weights can be compared: Muon's bf16 Newton-Schulz turns reduction-order
    noise into updates 3% (DDP) to 8% (FSDP2) apart after 6 steps, at losses equal to 1e-4 (measured)."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_script(tmp_path, str(one), "6", "0", "--no-dropout", "--adamw").returncode == 0
    proc = run_script(tmp_path, str(two), "6", "5", "--no-dropout", "--adamw", "--fsdp", nproc=2)
    assert proc.returncode != 0 and latest_checkpoint(two / "checkpoints").name == "step-4"
    proc = run_script(tmp_path, str(two), "6", "0", "--no-dropout", "--adamw", "--fsdp", "--resume", nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    l1, l2 = losses(one), losses(two)
    assert sorted(l2) == [1, 2, 3, 4, 5, 6]
    for step in l1:  # (sharded reductions and Muon's products on shards add in another order: 1e-4 a step)
        assert l2[step] == pytest.approx(l1[step], rel=1e-3), step
    from encore import load

    a, b = load(one / "final").state_dict(), load(two / "final").state_dict()
    assert a.keys() == b.keys()
    off = {k: float((a[k] - b[k]).norm() / a[k].norm().clamp(min=1e-12)) for k in a}
    assert max(off.values()) < 1e-3, off


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from conftest import make_model

    model = make_model("encdec")
    root = tmp_path / "ckpts"
    save_checkpoint(root, 2, model, {"x": torch.ones(2)}, {"data": {"index": 3}})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(root, 4, model, {"x": torch.ones(2)}, {"data": {"index": 5}})
    assert [p.name for p in list_checkpoints(root)] == ["step-2"]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]  # nothing half-written left
    from encore import load

    assert torch.equal(load(root / "step-2").embed.weight, model.embed.weight)


def test_half_written_checkpoint_is_never_listed(tmp_path):
    root = tmp_path / "ckpts"
    (root / ".tmp-step-6-abc").mkdir(parents=True)  # what a kill mid-save leaves
    (root / "step-8").mkdir()  # a directory without its state files is not a checkpoint
    assert list_checkpoints(root) == [] and latest_checkpoint(root) is None


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    from conftest import make_model

    from encore.data.sources import TaskSource
    from encore.train import LossOutput, Seq2SeqLoss, TrainConfig, TrainingError, train

    model = make_model("encdec")

    def collate(batch):
        ids = torch.tensor([[5, 6, 7]] * len(batch))
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "decoder_input_ids": ids,
            "decoder_attention_mask": torch.ones_like(ids),
            "labels": ids,
        }

    class NanLoss(Seq2SeqLoss):
        def __call__(self, model, batch):
            return LossOutput(torch.tensor(float("nan"), requires_grad=True))

    cfg = TrainConfig(out_dir=str(tmp_path / "run"), max_steps=3, batch_size=2, micro_batch_size=2, progress=False)
    with pytest.raises(TrainingError, match="loss is nan at step 1"):
        train(model, cfg, TaskSource([{"x": 1}] * 4, collate), loss_fn=NanLoss())
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is None
