import pytest
import torch
from conftest import make_model

from encore.config import ModelConfig
from encore.data import (
    CausalLMCollator,
    Seq2SeqCollator,
    TruncationError,
    finetune_collator,
    prompt_ids,
    special_ids,
    tokenize_pairs,
)
from encore.tokenizer import encode_text, train_tokenizer
from encore.train import causal_lm_loss, seq2seq_loss

PAD, BOS, EOS = 0, 1, 2
EXAMPLES = [
    {"source_ids": [10, 11, 12], "target_ids": [20, 21]},
    {"source_ids": [13], "target_ids": [22, 23, 24, 25]},
]


def test_seq2seq_batch_layout():
    batch = Seq2SeqCollator(PAD, BOS, EOS)(EXAMPLES)
    assert batch["input_ids"].tolist() == [[10, 11, 12, EOS], [13, EOS, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[20, 21, EOS, -100, -100], [22, 23, 24, 25, EOS]]
    assert batch["decoder_input_ids"].tolist() == [[BOS, 20, 21, PAD, PAD], [BOS, 22, 23, 24, 25]]
    assert batch["decoder_attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    # decoder input = labels shifted right behind BOS, wherever there is a label
    shifted = torch.cat([torch.full((2, 1), BOS), batch["labels"][:, :-1]], 1)
    keep = batch["decoder_attention_mask"].bool()
    assert torch.equal(batch["decoder_input_ids"][keep], shifted[keep])
    assert all(v.dtype == torch.long for v in batch.values())


def test_causal_batch_loss_only_on_target():
    batch = CausalLMCollator(PAD, BOS, EOS)([*EXAMPLES, {"source_ids": [14], "target_ids": [26]}])
    assert batch["input_ids"].tolist() == [
        [BOS, 10, 11, 12, EOS, 20, 21, EOS],
        [BOS, 13, EOS, 22, 23, 24, 25, EOS],
        [BOS, 14, EOS, 26, EOS, PAD, PAD, PAD],
    ]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1] * 8, [1] * 5 + [0] * 3]
    assert batch["labels"].tolist() == [
        [-100, -100, -100, -100, -100, 20, 21, EOS],
        [-100, -100, -100, 22, 23, 24, 25, EOS],
        [-100, -100, -100, 26, EOS, -100, -100, -100],
    ]
    # packed pretraining chunks: loss on every token
    packed = CausalLMCollator(PAD, BOS, EOS)([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9, 10]}])
    assert torch.equal(packed["labels"], packed["input_ids"]) and bool(packed["attention_mask"].all())


def test_truncation_policies_are_explicit_and_counted():
    long = [{"source_ids": list(range(10, 20)), "target_ids": list(range(30, 40))}, EXAMPLES[0]]
    right = Seq2SeqCollator(PAD, BOS, EOS, max_source_len=4, max_target_len=3)
    b = right(long)
    assert b["input_ids"][0].tolist() == [10, 11, 12, EOS]  # the start kept, EOS always there
    assert b["labels"][0].tolist() == [30, 31, EOS]
    assert b["input_ids"][1].tolist() == [10, 11, 12, EOS]  # 3 + EOS fits exactly: not cut
    assert (right.stats.examples, right.stats.sources, right.stats.targets) == (2, 1, 1)
    assert right.report() == "1 of 2 sources truncated to 4 tokens, 1 of 2 targets truncated to 3 tokens"

    left = CausalLMCollator(PAD, BOS, EOS, max_source_len=5, max_target_len=4, truncation="left")
    b = left(long[:1])
    assert b["input_ids"][0].tolist() == [BOS, 17, 18, 19, EOS, 30, 31, 32, EOS]  # the end of the source kept
    assert b["labels"][0].tolist() == [-100] * 5 + [30, 31, 32, EOS]

    strict = Seq2SeqCollator(PAD, BOS, EOS, max_source_len=4, truncation="error")
    with pytest.raises(TruncationError, match=r"example 7: the source has 10 tokens, more than the 3 that fit"):
        strict([{**long[0], "id": 7}])
    assert strict(EXAMPLES)["input_ids"].shape == (2, 4)
    # a dataset-wide count, without touching the running counts
    stats = right.check(long * 5)
    assert (stats.examples, stats.sources, stats.targets) == (10, 5, 5) and right.stats.examples == 2
    with pytest.raises(ValueError, match="truncation must be"):
        Seq2SeqCollator(PAD, BOS, EOS, truncation="middle")
    with pytest.raises(ValueError, match="no room"):
        CausalLMCollator(PAD, BOS, EOS, max_source_len=2)
    with pytest.raises(ValueError, match="has no 'target_ids'"):
        Seq2SeqCollator(PAD, BOS, EOS)([{"source_ids": [1]}])


@pytest.fixture(scope="module")
def tok():
    texts = ["question: what is two plus two? context: two plus two is four."] * 20
    return train_tokenizer(texts, vocab_size=400)


def test_prompt_ids_match_the_collators(tok):
    pairs = tokenize_pairs(tok, [{"source": "what is two plus two?", "target": "four", "id": 3}])
    assert pairs[0]["id"] == 3 and pairs[0]["target_ids"] == encode_text(tok, "four")
    assert special_ids(tok) == (0, 1, 2)
    for arch, preset in (("encdec", "encdec-tiny"), ("deconly", "deconly-tiny")):
        collate = finetune_collator(ModelConfig.preset(preset), max_source_len=64, max_target_len=8)
        assert isinstance(collate, Seq2SeqCollator if arch == "encdec" else CausalLMCollator)
        row = collate(pairs)["input_ids"][0].tolist()
        prompt = prompt_ids(tok, "what is two plus two?", ModelConfig.preset(preset))
        assert row[: len(prompt)] == prompt  # generation sees the source exactly as training did
        assert prompt[-1] == tok.eos_token_id and (arch == "encdec" or prompt[0] == tok.bos_token_id)


def test_batches_drive_the_training_losses(arch):
    """The collated batches are what encore.train's losses expect: the loss counts the target tokens only."""
    model = make_model(arch)
    collate = finetune_collator(model.config, max_source_len=6, max_target_len=4)
    examples = [{"source_ids": [10, 11, 12, 13, 14, 15, 16], "target_ids": [20, 21]}, EXAMPLES[1]]
    batch = collate(examples)
    loss_fn = seq2seq_loss if arch == "encdec" else causal_lm_loss
    out = loss_fn(model, batch)
    assert torch.isfinite(out.total) and out.total.requires_grad
    assert loss_fn.target_tokens(batch) == 3 + 4  # 2 + EOS, 3 (cut to fit 4) + EOS
    # the model reads every real token: encoder + decoder inputs, or the whole sequence
    assert loss_fn.read_tokens(batch) == sum(int(m.sum()) for k, m in batch.items() if k.endswith("attention_mask"))
