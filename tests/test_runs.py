"""Runs that never lose work: a run folder belongs to one run, resume past a damaged checkpoint,
SIGINT saves and resumes exactly, one-line errors (no tracebacks), local paths never tried as hub
ids, progress lines in a redirected log, defaults in --help."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli_train import records, write_config, write_pairs

from encore.cli import main
from encore.files import looks_local
from encore.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["--batch-size", "4", "--micro-batch-size", "2"]


def finetune(tmp_path: Path, out: Path, *extra: str, steps: int = 2, config: str | None = None) -> int:
    config = config or write_config(tmp_path / "encdec.json", "encdec")
    task = write_pairs(tmp_path / "pairs.jsonl")
    argv = ["finetune", "--model", config, "--task", task, "--max-steps", str(steps), *STEPS, "--out", str(out)]
    return main([*argv, *extra])


def steps_logged(out: Path) -> list[int]:
    return [r["step"] for r in records(out) if "loss" in r]


def test_an_earlier_run_is_refused_then_overwritten_or_resumed(tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune(tmp_path, out, "--save-every", "1") == 0
    capsys.readouterr()
    assert finetune(tmp_path, out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds an earlier run (metrics.jsonl; checkpoints/ (step-1, step-2); final/)" in err
    assert "--resume" in err and "--overwrite" in err
    assert steps_logged(out) == [1, 2]  # nothing touched
    assert finetune(tmp_path, out, "--resume", steps=4) == 0
    assert steps_logged(out) == [1, 2, 3, 4]  # continued from step 2
    assert finetune(tmp_path, out, "--overwrite", "--save-every", "1", steps=1) == 0
    assert steps_logged(out) == [1] and [p.name for p in (out / "checkpoints").iterdir()] == ["step-1"]


def test_resume_needs_a_checkpoint_unless_auto(tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune(tmp_path, out, "--resume") == 2
    assert "no checkpoint in" in capsys.readouterr().err and not out.exists()
    assert finetune(tmp_path, out, "--resume=auto") == 0 and steps_logged(out) == [1, 2]
    assert finetune(tmp_path, out, "--resume=later") == 2
    assert "--resume takes no value or 'auto'" in capsys.readouterr().err
    assert finetune(tmp_path, out, "--resume", "--overwrite") == 2


def test_resume_refuses_another_model_and_changed_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune(tmp_path, out) == 0
    other = write_config(tmp_path / "wide.json", "encdec", d_model=96)
    capsys.readouterr()
    assert finetune(tmp_path, out, "--resume", steps=3, config=other) == 2
    err = capsys.readouterr().err
    assert "is another model (model.d_model: 64 in the checkpoint, 96 now" in err
    argv = ["--resume", "--batch-size", "8", "--seed", "3"]
    assert finetune(tmp_path, out, *argv, steps=3) == 2
    err = capsys.readouterr().err
    assert "--batch-size: 4 in the checkpoint, 8 now" in err and "--seed: 0 in the checkpoint, 3 now" in err
    assert "--allow-changed-settings" in err
    assert finetune(tmp_path, out, *argv, "--allow-changed-settings", steps=3) == 0
    assert steps_logged(out) == [1, 2, 3]


@pytest.mark.parametrize("damage", ["model.safetensors", "trainer.pt", "state.json"])
def test_resume_skips_a_damaged_checkpoint(tmp_path, caplog, damage):
    out = tmp_path / "run"
    assert finetune(tmp_path, out, "--save-every", "1", steps=3) == 0
    newest = out / "checkpoints" / "step-3"
    target = newest / damage
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])  # a crash mid-copy
    assert finetune(tmp_path, out, "--resume", "--save-every", "1", steps=4) == 0
    assert f"checkpoint {newest} does not load" in caplog.text and "moved to step-3.damaged" in caplog.text
    assert (out / "checkpoints" / "step-3.damaged").is_dir()
    assert steps_logged(out) == [1, 2, 3, 4]  # resumed from step 2: step 3 ran again
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-2", "step-3", "step-3.damaged", "step-4"]


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_resume_is_exact(tmp_path):
    config = write_config(tmp_path / "encdec.json", "encdec")
    task = write_pairs(tmp_path / "pairs.jsonl")
    base = ["finetune", "--model", config, "--task", task, "--max-steps", "60", *STEPS]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    full, cut = tmp_path / "full", tmp_path / "cut"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the interrupted process runs: bit-identical losses need the same reductions
    try:
        _interrupt_and_resume(base, env, full, cut)
    finally:
        torch.set_num_threads(threads)


def _interrupt_and_resume(base: list[str], env: dict[str, str], full, cut) -> None:
    assert main([*base, "--out", str(full)]) == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "encore", *base, "--out", str(cut)], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not ((cut / "metrics.jsonl").exists() and len(records(cut)) >= 5):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    step = max(steps_logged(cut))
    assert step < 60 and f"SIGINT at step {step}: checkpoint saved in {cut / 'checkpoints' / f'step-{step}'}" in err
    resume = err.strip().splitlines()[-1]
    assert resume.startswith("resume with: encore finetune") and resume.endswith("--resume")
    assert main(resume.removeprefix("resume with: encore ").split()) == 0
    losses = lambda out: {r["step"]: r["loss"] for r in records(out) if "loss" in r}  # noqa: E731
    assert losses(cut) == losses(full)  # bit-identical to the uninterrupted run


def test_path_like_names_are_missing_files_not_hub_ids(tmp_path, capsys):
    assert looks_local("./x") and looks_local("/abs") and looks_local("a/b/c") and looks_local(str(tmp_path / "x"))
    assert not looks_local("gpt2") and not looks_local("org/model")  # hub ids
    config = write_config(tmp_path / "encdec.json", "encdec")
    start = time.monotonic()
    argv = ["pretrain", "--model", config, "--tokenizer", "./no/such-tokenizer", "--out", str(tmp_path / "p")]
    assert main(argv) == 2
    assert "--tokenizer ./no/such-tokenizer: no such file or directory" in capsys.readouterr().err
    teacher = str(tmp_path / "teachr" / "final")
    argv = ["distill", "--teacher", teacher, "--student", config, "--task", "x", "--out", str(tmp_path / "d")]
    assert main(argv) == 2
    assert f"--teacher {teacher}: no such file or directory" in capsys.readouterr().err
    assert time.monotonic() - start < 30  # no hub retries


def test_bad_input_gets_one_line_not_a_traceback(tmp_path, capsys):
    def error(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        return err

    assert "--batch-size 10 must be a multiple of --micro-batch-size 8" in error(
        [
            "finetune",
            "--model",
            write_config(tmp_path / "c.json", "encdec"),
            "--task",
            write_pairs(tmp_path / "p.jsonl"),
            "--batch-size",
            "10",
            "--micro-batch-size",
            "8",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    garbage = tmp_path / "garbage" / "tokenizer.json"
    garbage.parent.mkdir()
    garbage.write_text("{not json")
    assert str(garbage) in error(
        ["pretrain", "--model", "encdec-tiny", "--tokenizer", str(garbage), "--out", str(tmp_path / "p")]
    )
    garbage.write_text(json.dumps({"version": "1.0"}))  # valid JSON, not a tokenizer
    assert str(garbage) in error(
        ["pretrain", "--model", "encdec-tiny", "--tokenizer", str(garbage), "--out", str(tmp_path / "p")]
    )
    err = error(["bench", "--input-len", "10000000", "--no-sweep", "--json", "", "--plot", "", "--quiet"])
    assert "--input-len 10000000" in err and "GiB available" in err
    with pytest.raises(SystemExit):
        main(["pretrain", "--model", "encdec-tiny", "--out", str(tmp_path / "o"), "--max-steps", "-1"])
    assert "argument --max-steps: must be >= 1, got -1" in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-steps MAX_STEPS (default: 1000)" in text and "--keep-last KEEP_LAST checkpoints kept (0: all)" in text


def test_progress_prints_lines_when_not_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv("ENCORE_QUIET", raising=False)
    progress = Progress(10, initial=2, unit="step", desc="train", every_s=0.0)
    progress.update(1, loss=2.5, tok_s=100)
    progress.update(1, loss=2.25, tok_s=110)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("train: step 3/10 loss 2.5 tok_s 100 (") and "ETA" in lines[0]
    assert lines[-1].startswith("train: step 4/10 loss 2.25")
    monkeypatch.setenv("ENCORE_QUIET", "1")
    quiet = Progress(10, every_s=0.0)
    quiet.update(1)
    quiet.close()
    assert capsys.readouterr().err == ""
