"""The training CLI end to end on tiny models: pretrain -> finetune -> eval / generate, and distill."""

import json
from pathlib import Path

import pytest
import torch

from encore import ModelConfig, load
from encore.cli import main
from encore.data.sources import TaskSource, WithExampleIds
from encore.distill import DistillSource, parse_target_mix

TINY = dict(d_model=64, n_heads=2, n_kv_heads=1, head_dim=32, mlp_dim=128, max_seq_len=512, vocab_size=64)
PAIRS = [{"source": f"def f{i}(x):\n    return x + {i}", "target": f"Return x plus {i}."} for i in range(24)]


def write_config(path: Path, arch: str, **overrides) -> str:
    layers = (
        dict(n_encoder_layers=1, n_decoder_layers=1)
        if arch == "encdec"
        else dict(n_encoder_layers=0, n_decoder_layers=2)
    )
    ModelConfig(arch=arch, **{**TINY, **layers, **overrides}).save(path)
    return str(path)


def write_pairs(path: Path) -> str:
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return str(path)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


STEPS = ["--max-steps", "2", "--batch-size", "4", "--micro-batch-size", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["encdec", "deconly"])
def test_pretrain_finetune_eval_generate(tmp_path, arch, capsys):
    config = write_config(tmp_path / f"{arch}.json", arch)
    pre, fin = tmp_path / "pre", tmp_path / "fin"
    assert main(["pretrain", "--model", config, "--data", "stdlib", "--seq-len", "64", *STEPS, "--out", str(pre)]) == 0
    first = records(pre)[0]
    assert first["step"] == 1 and {"loss", "lr", "tokens_per_s"} <= set(first)
    task = write_pairs(tmp_path / "pairs.jsonl")
    args = ["finetune", "--model", str(pre / "final"), "--task", task, *STEPS, "--out", str(fin)]
    assert main([*args, "--eval-every", "2", "--eval-split", "train", "--eval-batches", "1"]) == 0
    assert any("eval_loss" in r for r in records(fin))
    model = load(fin / "final")
    assert model.config.arch == arch and model.tokenizer is not None

    from transformers import AutoTokenizer  # the checkpoint's tokenizer is a plain HF tokenizer

    assert len(AutoTokenizer.from_pretrained(str(fin / "final"))) == len(model.tokenizer)

    pred = tmp_path / "pred.jsonl"
    argv = ["eval", "--model", str(fin / "final"), "--task", task, "--max-new-tokens", "4", "--out", str(pred)]
    assert main(argv) == 0
    metrics = json.loads(pred.with_suffix(".metrics.json").read_text())
    assert metrics["examples"] == len(PAIRS) and "rougeL" in metrics
    lines = [json.loads(line) for line in pred.read_text().splitlines()]
    assert [line["target"] for line in lines] == [p["target"] for p in PAIRS]
    capsys.readouterr()
    assert main(["generate", "--model", str(fin / "final"), "--input", "def g(): pass", "--max-new-tokens", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1  # one input, one output line


def test_bad_model_spec_and_task_option_are_clear(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["finetune", "--model", "no-such-preset", "--task", "synthqa", "--out", out]) == 2
    assert "neither a checkpoint directory" in capsys.readouterr().err
    config = write_config(tmp_path / "c.json", "encdec")
    assert main(["finetune", "--model", config, "--task", "synthqa", "--task-option", "oops", "--out", out]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    argv = ["finetune", "--model", config, "--task", "synthqa", "--task-option", "max_entities=0", "--out", out]
    assert main(argv) == 2
    assert "max_entities" in capsys.readouterr().err


def test_parse_target_mix():
    assert parse_target_mix("gold") == {"gold": 1.0}
    assert parse_target_mix("gold=3,student=1") == {"gold": 0.75, "student": 0.25}
    for bad, why in [("silver", "unknown target source"), ("gold=x", "not a probability"), ("gold=0", "sum to 0")]:
        with pytest.raises(ValueError, match=why):
            parse_target_mix(bad)


def _source(tmp_path, mix, **kw):
    from encore.data import Seq2SeqCollator

    examples = [{"source_ids": [5 + i, 6, 7], "target_ids": [9, 9, 9], "example_id": i} for i in range(10)]
    collator = Seq2SeqCollator(0, 1, 2)
    inner = TaskSource(examples, WithExampleIds(collator), seed=3)
    return DistillSource(inner, mix, collator=collator, cache_dir=tmp_path / "cache", seed=1, **kw)


def test_distill_source_draws_are_seeded_and_resumable(tmp_path, monkeypatch):
    generated: list[int] = []

    def fake_generate(self, model, examples, teacher):
        generated.extend(e["example_id"] for e in examples)
        return [[3, e["source_ids"][0]] for e in examples]

    monkeypatch.setattr(DistillSource, "_generate", fake_generate)
    mix = parse_target_mix("gold=0.5,teacher=0.5")
    a = _source(tmp_path / "a", mix, teacher=object())
    first = a.next_batch(4)
    state = a.state_dict()
    second = a.next_batch(4)
    drawn = first + second
    for e in drawn:  # each target is the gold one or the (fake) teacher's answer to that very source
        assert e["target_ids"] in ([9, 9, 9], [3, e["source_ids"][0]])
    assert {e["target_ids"][0] for e in drawn} == {9, 3}  # both sources were drawn
    assert sorted(set(generated)) == sorted({e["example_id"] for e in drawn if e["target_ids"][0] == 3})
    # a resumed source (new process: cache read back from disk) draws the same targets, generating nothing new
    n_generated = len(generated)
    b = _source(tmp_path / "a", mix, teacher=object())
    b.load_state_dict(state)
    assert b.next_batch(4) == second
    assert len(generated) == n_generated
    batch = b.collate(second)
    assert batch["example_ids"].tolist() == [e["example_id"] for e in second]


@pytest.mark.slow
def test_distill_cli_online_mixed_and_offline_topk(tmp_path, capsys):
    teacher_cfg = write_config(tmp_path / "t.json", "deconly", n_decoder_layers=3)
    student_cfg = write_config(tmp_path / "s.json", "encdec")
    task = write_pairs(tmp_path / "pairs.jsonl")
    teacher = tmp_path / "teacher"
    assert main(["finetune", "--model", teacher_cfg, "--task", task, *STEPS, "--out", str(teacher)]) == 0
    common = ["distill", "--teacher", str(teacher / "final"), "--student", student_cfg, "--task", task, *STEPS]
    online = tmp_path / "online"
    argv = [*common, "--targets", "gold=0.4,teacher=0.3,student=0.3", "--target-max-new-tokens", "4"]
    assert main([*argv, "--out", str(online), "--alpha", "0.7", "--kind", "jsd"]) == 0
    rec = records(online)
    assert rec[-1]["step"] == 2 and {"kd", "ce"} <= set(rec[-1])
    assert (online / "teacher_targets" / "targets.jsonl").exists()
    offline = tmp_path / "offline"
    assert main([*common, "--topk", "8", "--out", str(offline)]) == 0
    assert (offline / "teacher_topk" / "topk-index.json").exists()
    student = load(offline / "final")
    assert student.config.arch == "encdec"
    assert torch.isfinite(torch.tensor([r["loss"] for r in records(offline)])).all()
    # a decoder-only student of the decoder-only teacher, from its stored top-k
    argv = [*common[:3], "--student", teacher_cfg, *common[5:], "--topk", "8", "--out", str(tmp_path / "causal")]
    assert main(argv) == 0
    assert (tmp_path / "causal" / "teacher_topk" / "topk-index.json").is_file()
    assert load(tmp_path / "causal" / "final").config.arch == "deconly"


def test_python_dash_m_and_help():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "encore", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("pretrain", "finetune", "distill", "generate", "eval", "bench"):
        assert command in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "encore", "nope"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
