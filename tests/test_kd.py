"""The distillation recipe: skewed KLs, on-policy KD as GKD does it (the divergence on the student's
samples, cross-entropy on gold), sequence-level KD on unlabeled sources, and the changed-task test (a
teacher that knows something the gold targets do not say is reproduced by every KD student)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from encore.cli import main
from encore.data import Seq2SeqCollator
from encore.data.sources import TaskSource, WithExampleIds
from encore.distill import DistillError, DistillLoss, DistillSource, Teacher, kd_loss, parse_target_mix
from tests.test_distill import BOS, mixed_batch, tiny_llama, tiny_student

# --- skewed KLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,plain", [("skew_forward_kl", "forward_kl"), ("skew_reverse_kl", "reverse_kl")])
def test_skew_kl_is_bounded_and_beta_zero_is_the_plain_kl(kind, plain):
    torch.manual_seed(0)
    s = torch.randn(2, 3, 16, requires_grad=True)
    t = torch.randn(2, 3, 16) * 3
    assert kd_loss(s, t, kind=kind, beta=0.0).item() == pytest.approx(kd_loss(s, t, kind=plain).item(), rel=1e-5)
    # against a peaked teacher the plain KLs are unbounded; the skewed ones stay under log(1/β)
    peaked = torch.full((2, 3, 16), -30.0)
    peaked[..., 0] = 30.0
    far = torch.zeros(2, 3, 16)
    far[..., 5] = 20.0
    for beta in (0.1, 0.3):
        assert kd_loss(far, peaked, kind=plain).item() > 15
        assert kd_loss(far, peaked, kind=kind, beta=beta).item() <= math.log(1 / beta) + 1e-5
    (grad,) = torch.autograd.grad(kd_loss(s, t, kind=kind), s)
    assert torch.isfinite(grad).all()
    with pytest.raises(DistillError, match="beta"):
        kd_loss(s, t, kind=kind, beta=1.0)


# --- on-policy: KD on the student's samples, CE on gold ----------------------------------------------


def _decoder_side(labels: torch.Tensor, mask: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
    B = labels.shape[0]
    return {
        prefix + "decoder_input_ids": torch.cat([torch.full((B, 1), BOS), labels[:, :-1].clamp(min=0)], 1),
        prefix + "decoder_attention_mask": torch.cat([torch.ones(B, 1, dtype=torch.long), mask[:, :-1]], 1),
        prefix + "labels": labels,
    }


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_on_policy_loss_takes_kd_on_samples_and_ce_on_gold(alpha):
    teacher = Teacher(tiny_llama(), bos_id=BOS, valid_vocab=40)
    student = tiny_student()
    src, src_mask, gold, gold_mask = mixed_batch(seed=0)
    _, _, sample, sample_mask = mixed_batch(seed=1)  # different tokens
    sample = sample[:, :3].masked_fill(torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 1]]).bool(), -100)  # 3, 2, 1
    sample_mask = (sample != -100).long()
    batch = {"input_ids": src, "attention_mask": src_mask, **_decoder_side(gold, gold_mask)}
    batch.update(_decoder_side(sample, sample_mask, "kd_"))
    loss = DistillLoss(teacher, alpha=alpha, kind="forward_kl", temperature=2.0)
    calls = []
    student.register_forward_hook(lambda *a: calls.append(1))
    out = loss(student, batch)
    assert len(calls) == (1 if alpha == 1.0 else 2)  # α = 1: no CE pass
    # by hand: the teacher scored on the samples, the student's samples' logits, CE on gold
    from encore.distill import aligned_teacher_logits

    kd_logits = student(src, batch["kd_decoder_input_ids"], src_mask, batch["kd_decoder_attention_mask"])
    t = aligned_teacher_logits(teacher, src, src_mask, sample, sample_mask, vocab_size=48)
    kd_mean = kd_loss(kd_logits, t, sample_mask.bool(), "forward_kl", temperature=2.0)
    n_gold = int((gold != -100).sum())
    expected = alpha * 4 * kd_mean.item() * n_gold
    if alpha < 1:
        logits = student(src, batch["decoder_input_ids"], src_mask, batch["decoder_attention_mask"])
        ce = F.cross_entropy(logits[gold != -100], gold[gold != -100], reduction="sum")
        expected += (1 - alpha) * ce.item()
        assert float(out.metrics["ce"]) == pytest.approx(ce.item() / n_gold, rel=1e-4)
    assert float(out.metrics["kd"]) == pytest.approx(kd_mean.item(), rel=1e-4)
    assert out.total.item() == pytest.approx(expected, rel=1e-4)
    assert loss.target_tokens(batch) == n_gold and loss.read_tokens(batch) > int(src_mask.sum()) + n_gold


class Sampler:
    """A stand-in student: `generate` records its sampling arguments and answers from them."""

    def __init__(self):
        self.calls = []
        self.config = type("C", (), {"eos_token_id": 2})()
        self._p = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self._p])

    def generate(self, ids, mask, max_new_tokens, **sampling):
        self.calls.append(sampling)
        seed = sampling.get("seed", 0)
        return torch.tensor([[10 + seed % 7, 11, 2, 0]] * ids.shape[0])


def _source(tmp_path, mix, examples=None, **kw):
    examples = examples or [{"source_ids": [5 + i, 6, 7], "target_ids": [9, 9], "example_id": i} for i in range(8)]
    collator = Seq2SeqCollator(0, 1, 2)
    inner = TaskSource(examples, WithExampleIds(collator), seed=3)
    return DistillSource(inner, mix, collator=collator, cache_dir=tmp_path / "cache", seed=1, **kw)


def test_on_policy_source_samples_into_kd_targets_and_keeps_gold(tmp_path):
    student = Sampler()
    source = _source(tmp_path, parse_target_mix("gold=0.5,student=0.5"), student=student, sample_temperature=0.7)
    first = source.next_batch(6)
    state = source.state_dict()
    second = source.next_batch(6)
    sampled = [e for e in first + second if "kd_target_ids" in e]
    assert sampled and all(e["target_ids"] == [9, 9] for e in first + second)  # gold kept for CE
    assert student.calls[0]["do_sample"] and student.calls[0]["temperature"] == 0.7
    assert student.calls[0]["seed"] != student.calls[1]["seed"]  # a fresh seed per draw...
    resumed = _source(tmp_path, parse_target_mix("gold=0.5,student=0.5"), student=Sampler(), sample_temperature=0.7)
    resumed.load_state_dict(state)
    assert resumed.next_batch(6) == second  # ...that a resumed run draws again
    batch = source.collate(first)
    assert {"kd_decoder_input_ids", "kd_decoder_attention_mask", "kd_labels"} <= set(batch)
    for row, e in enumerate(first):  # the KD sequence is the sample where there is one, else the target
        want = e.get("kd_target_ids", e["target_ids"]) + [2]
        assert batch["kd_labels"][row][: len(want)].tolist() == want
        assert batch["labels"][row][:3].tolist() == [9, 9, 2]
    assert "kd_labels" not in source.collate([e for e in first if "kd_target_ids" not in e])
    greedy = _source(tmp_path / "g", {"student": 1.0}, student=Sampler(), sample_temperature=0.0)
    greedy.next_batch(2)
    assert greedy.student.calls == [{}]


def test_unlabeled_sources_take_the_teachers_targets(tmp_path, monkeypatch):
    asked: list[int] = []

    def fake_generate(self, model, examples, teacher):
        assert teacher
        asked.extend(e["example_id"] for e in examples)
        return [[3, e["source_ids"][0]] for e in examples]

    monkeypatch.setattr(DistillSource, "_generate", fake_generate)
    examples = [{"source_ids": [5 + i, 6], "target_ids": [9], "example_id": i} for i in range(4)]
    examples += [
        {"source_ids": [50 + i, 6], "target_ids": [], "example_id": 4 + i, "unlabeled": True} for i in range(6)
    ]
    source = _source(tmp_path, {"gold": 1.0}, examples, teacher=object())
    assert source.prepare(batch_size=4) == 6 and sorted(asked) == list(range(4, 10))
    assert _source(tmp_path, {"gold": 1.0}, examples, teacher=object()).prepare() == 0  # cached on disk
    for e in source.next_batch(10):
        assert e["target_ids"] == ([3, e["source_ids"][0]] if e.get("unlabeled") else [9])
    with pytest.raises(ValueError, match="need the teacher"):
        _source(tmp_path, {"gold": 1.0}, examples)


# --- through the CLI -----------------------------------------------------------------------------------


def test_distill_cli_unlabeled_and_on_policy(tmp_path):
    from encore.cli.common import build_model
    from tests.test_cli_train import STEPS, write_config, write_pairs

    teacher_cfg = str(tmp_path / "teacher")  # a random decoder-only checkpoint with the default tokenizer
    build_model(write_config(tmp_path / "t.json", "deconly")).save_pretrained(teacher_cfg)
    student_cfg = write_config(tmp_path / "s.json", "encdec")
    task = write_pairs(tmp_path / "pairs.jsonl")
    sources = tmp_path / "sources.jsonl"  # sources only; the first repeats a labeled one and is skipped
    labeled = [json.loads(line)["source"] for line in open(task)]
    sources.write_text("".join(json.dumps({"source": s}) + "\n" for s in [labeled[0], "def g(y): pass", "x = 1"]))
    common = ["distill", "--teacher", teacher_cfg, "--student", student_cfg, "--task", task, "--limit", "6", *STEPS]
    out = tmp_path / "kd"
    argv = [*common, "--unlabeled", str(sources), "--targets", "gold=0.5,student=0.5", "--alpha", "0.5"]
    assert main([*argv, "--kind", "skew_reverse_kl", "--target-max-new-tokens", "4", "--out", str(out)]) == 0
    cached = [json.loads(line) for line in (out / "teacher_targets" / "targets.jsonl").read_text().splitlines()]
    assert sorted(r["example_id"] for r in cached) == [6, 7]  # the two new sources, after the 6 labeled
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"kd", "ce"} <= set(record) and math.isfinite(record["loss"])
    bad = tmp_path / "empty.jsonl"
    bad.write_text(json.dumps({"source": labeled[0]}) + "\n")
    assert main([*common, "--unlabeled", str(bad), "--out", str(tmp_path / "x")]) == 2


def _bart_teacher(directory):
    """A tiny BART checkpoint (2 + 3 layers) with encore's trained tokenizer: (its directory, the model)."""
    import transformers

    from encore.convert import load
    from encore.tokenizer import train_tokenizer
    from tests.test_convert_cli import TEXTS, VOCAB

    torch.manual_seed(0)
    config = transformers.BartConfig(
        vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=128,
        dropout=0.0, forced_eos_token_id=None, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=2,
    )  # fmt: skip
    transformers.BartForConditionalGeneration(config).save_pretrained(directory)
    train_tokenizer(TEXTS, vocab_size=VOCAB).save_pretrained(str(directory))
    return directory, load(directory)


def test_an_encoder_decoder_teacher_distils_its_shallower_self(tmp_path):
    """distil-whisper's recipe on a BART checkpoint: `encore adapt --decoder-layers 1` keeps the encoder
    and one decoder layer, then `encore distill --teacher <the original> --freeze encoder` trains the
    decoder against the teacher's own decoder (a `Seq2SeqTeacher`, which reads the student's batch as
    it is). The teacher scoring itself gives KD 0; the frozen encoder does not move; a student that
    lays pairs out otherwise is refused in one line."""
    from encore.convert import load
    from encore.distill import load_teacher
    from encore.distill.seq2seq_teacher import Seq2SeqTeacher
    from tests.test_cli_train import STEPS, write_pairs
    from tests.test_convert_cli import VOCAB

    big, model = _bart_teacher(tmp_path / "bart")
    teacher = load_teacher(big, tokenizer=model.tokenizer, student=model.config)
    assert isinstance(teacher, Seq2SeqTeacher)
    g = torch.Generator().manual_seed(0)
    ids, dec = torch.randint(3, VOCAB, (2, 9), generator=g), torch.randint(3, VOCAB, (2, 5), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": dec,
             "decoder_attention_mask": torch.ones_like(dec), "labels": torch.roll(dec, -1, 1)}  # fmt: skip
    out = DistillLoss(teacher, alpha=1.0, kind="forward_kl")(model, batch)
    assert float(out.metrics["kd"]) < 1e-6  # the teacher is the student: nothing to learn
    shallow = tmp_path / "shallow"
    assert main(["adapt", "--from", str(big), "--out", str(shallow), "--decoder-layers", "1"]) == 0
    task = write_pairs(tmp_path / "pairs.jsonl")
    run = tmp_path / "kd"
    argv = ["distill", "--teacher", str(big), "--student", str(shallow), "--task", task, *STEPS]
    assert main([*argv, "--freeze", "encoder", "--kind", "forward_kl", "--out", str(run)]) == 0
    before, after = load(shallow).state_dict(), load(run / "final").state_dict()
    assert all(torch.equal(after[n], t) for n, t in before.items() if n.startswith("encoder."))
    assert any(not torch.equal(after[n], t) for n, t in before.items() if n.startswith("decoder."))
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["kd"])
    other = load(shallow)
    other.config = other.config.replace(bos_token_id=1)
    with pytest.raises(DistillError, match="decoder start token is 2, the student's 1"):
        load_teacher(big, tokenizer=other.tokenizer, student=other.config)


def test_a_decoder_only_student_from_either_teacher(tmp_path):
    """The paper's open check 3: an encoder-decoder teacher (BART) distils into a decoder-only student
    (`CausalDistillLoss`): the teacher reads each row's source in its encoder and scores its target in
    its decoder, matching per-row runs; a decoder-only teacher reads the student's rows as they are (a
    student taught by itself: KD 0). Through `encore distill`; what it does not take yet is one line."""
    from encore.cli.common import build_model
    from encore.data import finetune_collator, tokenize_pairs
    from encore.distill import load_teacher
    from encore.distill.causal_loss import CausalDistillLoss, seq2seq_target_logits
    from tests.test_cli_train import PAIRS, STEPS, write_config, write_pairs
    from tests.test_convert_cli import VOCAB

    big, bart = _bart_teacher(tmp_path / "bart")
    student_cfg = write_config(tmp_path / "s.json", "deconly", vocab_size=VOCAB)
    student = build_model(student_cfg, str(big), 0, None, False)
    teacher = load_teacher(big, tokenizer=student.tokenizer, student=student.config)
    batch = finetune_collator(student.config)(tokenize_pairs(student.tokenizer, PAIRS[:3]))
    scored = batch["labels"][:, 1:] != -100
    got = seq2seq_target_logits(teacher, batch, student.config, scored)
    rows = []
    with torch.no_grad():
        for pair in tokenize_pairs(student.tokenizer, PAIRS[:3]):
            x, y = pair["source_ids"], pair["target_ids"] + [student.config.eos_token_id]
            enc = torch.tensor([bart.config.source_ids(x)])
            rows.append(bart(enc, torch.tensor([[bart.config.bos_token_id, *y[:-1]]]))[0])
    torch.testing.assert_close(got, torch.cat(rows), rtol=1e-4, atol=1e-4)
    task = write_pairs(tmp_path / "pairs.jsonl")
    argv = ["distill", "--teacher", str(big), "--student", student_cfg, "--task", task, *STEPS]
    assert main([*argv, "--kind", "forward_kl", "--out", str(tmp_path / "kd")]) == 0
    record = json.loads((tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["kd"]) and math.isfinite(record["ce"])
    student.save_pretrained(tmp_path / "self")  # decoder-only -> decoder-only: itself, nothing to learn
    itself = load_teacher(tmp_path / "self", tokenizer=student.tokenizer, student=student.config,
                          student_sources_end_in_eos=student.config.source_ends_in_eos)  # fmt: skip
    out = CausalDistillLoss(itself, student.config, alpha=1.0, kind="forward_kl")(student, batch)
    assert float(out.metrics["kd"]) < 1e-6


def test_a_decoder_only_students_targets_unlabeled_and_topk(tmp_path):
    """Every target mode reaches a decoder-only student: the encoder-decoder teacher writes targets and
    labels `--unlabeled` sources (reading each prompt's source in its own layout), the student samples
    its own (on-policy rows `kd_input_ids`...), and `--topk` stores the teacher once: with k = the whole
    vocabulary the stored KD equals the online one."""
    from encore.cli.common import build_model
    from encore.data import WithExampleIds, finetune_collator, tokenize_pairs
    from encore.distill import load_teacher, precompute_topk
    from encore.distill.causal_loss import CausalDistillLoss
    from tests.test_cli_train import PAIRS, STEPS, write_config, write_pairs
    from tests.test_convert_cli import VOCAB

    big, _ = _bart_teacher(tmp_path / "bart")
    student_cfg = write_config(tmp_path / "s.json", "deconly", vocab_size=VOCAB)
    task = write_pairs(tmp_path / "pairs.jsonl")
    sources = tmp_path / "sources.jsonl"
    sources.write_text("".join(json.dumps({"source": s}) + "\n" for s in ["def g(y): pass", "x = 1"]))
    common = ["distill", "--teacher", str(big), "--student", student_cfg, "--task", task, "--limit", "6", *STEPS]
    out = tmp_path / "mix"
    argv = [*common, "--unlabeled", str(sources), "--targets", "gold=0.4,teacher=0.3,student=0.3"]
    assert main([*argv, "--target-max-new-tokens", "4", "--kind", "jsd", "--out", str(out)]) == 0
    cached = [json.loads(line) for line in (out / "teacher_targets" / "targets.jsonl").read_text().splitlines()]
    assert {6, 7} <= {r["example_id"] for r in cached}  # the two unlabeled sources, labeled by the teacher
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"kd", "ce"} <= set(record) and math.isfinite(record["loss"])
    assert main([*common, "--topk", "8", "--alpha", "1", "--out", str(tmp_path / "topk")]) == 0
    assert (tmp_path / "topk" / "teacher_topk" / "topk-index.json").is_file()

    student = build_model(student_cfg, str(big), 0, None, False)
    teacher = load_teacher(big, tokenizer=student.tokenizer, student=student.config)
    pairs = [{**p, "example_id": i} for i, p in enumerate(tokenize_pairs(student.tokenizer, PAIRS[:4]))]
    batch = WithExampleIds(finetune_collator(student.config))(pairs)
    online = CausalDistillLoss(teacher, student.config, alpha=1.0, kind="forward_kl")
    vocab = student.config.vocab_size
    store = precompute_topk(teacher, [batch], tmp_path / "store", k=vocab, vocab_size=vocab,
                            targets=lambda b: online.teacher_targets(b, vocab))  # fmt: skip
    offline = CausalDistillLoss(None, student.config, store=store, alpha=1.0, kind="forward_kl")
    with torch.no_grad():
        want, got = online(student, batch).metrics["kd"], offline(student, batch).metrics["kd"]
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)  # fp16 stored log-probs


# --- the changed-task test --------------------------------------------------------------------------


def _digit_tokenizer(path):
    """A word-level tokenizer of the addition task's symbols: 16 ids, so tiny models train in ms/step."""
    from tests.test_distill import make_tokenizer

    make_tokenizer([str(d) for d in range(10)] + ["+", "<unk>"]).save_pretrained(path)
    return str(path)


def _answers(model_dir, n: int = 200) -> list[tuple[int, int, int | None]]:
    """(a, b, answer) for the first `n` validation problems of 2-digit addition, greedy."""
    from encore import load
    from encore.data import load_task

    model = load(model_dir)
    problems = list(load_task("addition", split="validation", digits=2, size=n))
    ids = [
        model.config.source_ids(model.tokenizer(p["source"], add_special_tokens=False)["input_ids"]) for p in problems
    ]
    width = max(map(len, ids))
    batch = torch.tensor([row + [model.config.pad_token_id] * (width - len(row)) for row in ids])
    mask = (torch.arange(width)[None] < torch.tensor([len(r) for r in ids])[:, None]).long()
    out = model.generate(batch, mask, max_new_tokens=5)
    answers = []
    for p, row in zip(problems, out.tolist()):
        a, b = (int(x.replace(" ", "")) for x in p["source"].split("+"))
        text = model.tokenizer.decode([t for t in row if t > 2], skip_special_tokens=True).replace(" ", "")
        answers.append((a, b, int(text) if text.isdigit() else None))
    return answers


@pytest.mark.experiment
def test_changed_task_every_kd_student_answers_like_the_teacher(tmp_path):
    """The teacher learns a + b + 1; students see only the gold a + b pairs. At alpha 1.0 every
    divergence, and on-policy, answers like the teacher on >= 80% of the held-out problems that the
    CE-only student answers like gold."""
    from tests.test_cli_train import write_config

    tok = _digit_tokenizer(tmp_path / "tok")
    shape = dict(d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=256, vocab_size=16, max_seq_len=64)
    teacher_cfg = write_config(tmp_path / "t.json", "deconly", **{**shape, "n_decoder_layers": 4})
    student_cfg = write_config(tmp_path / "s.json", "encdec", **{**shape, "n_encoder_layers": 2, "n_decoder_layers": 1})
    task = ["--task", "addition", "--task-option", "digits=2", "--max-source-len", "8", "--max-target-len", "4"]
    train = ["--batch-size", "64", "--micro-batch-size", "64", "--lr", "1e-2", "--seed", "0", "--tokenizer", tok]
    teacher = tmp_path / "teacher"
    argv = ["finetune", "--model", teacher_cfg, *task, "--task-option", "offset=1", *train, "--max-steps", "1000"]
    assert main([*argv, "--out", str(teacher)]) == 0
    teacher_like = [a + b + 1 == y for a, b, y in _answers(teacher / "final")]
    assert sum(teacher_like) >= 0.9 * len(teacher_like)
    ce = tmp_path / "ce"
    assert main(["finetune", "--model", student_cfg, *task, *train, "--max-steps", "1000", "--out", str(ce)]) == 0
    solved = [i for i, (a, b, y) in enumerate(_answers(ce / "final")) if y == a + b]
    assert len(solved) >= 100, "the CE-only student must learn gold addition for the comparison to mean anything"
    arms = {
        kind: ["--kind", kind] for kind in ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl")
    }
    arms["on-policy"] = ["--kind", "jsd", "--targets", "student", "--target-max-new-tokens", "4"]
    for name, flags in arms.items():
        out = tmp_path / name
        head = ["distill", "--teacher", str(teacher / "final"), "--student", student_cfg, "--alpha", "1.0", *flags]
        assert main([*head, *task, *train, "--max-steps", "1000", "--out", str(out)]) == 0
        answers = _answers(out / "final")
        like = sum(answers[i][2] == answers[i][0] + answers[i][1] + 1 for i in solved)
        assert like >= 0.8 * len(solved), f"{name}: like the teacher on {like} of {len(solved)}"
