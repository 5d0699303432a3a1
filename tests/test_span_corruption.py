import json

import numpy as np
import pytest

from encore.config import ModelConfig
from encore.data import (
    CausalLMStream,
    SpanCorruptionStream,
    TokenStream,
    open_corpus,
    pretraining_collator,
    pretraining_stream,
    random_spans_helper,
    random_spans_noise_mask,
    reconstruct,
    span_corrupt,
)
from encore.tokenizer import sentinel_ids, train_tokenizer

SENTINELS = list(range(32099, 31999, -1))  # T5's ids for <extra_id_0> .. <extra_id_99>
MANY = list(range(100_000, 101_000))  # long inputs at high density need more than 100 spans


def spans_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


def test_noise_mask_matches_t5_counts():
    rng = np.random.default_rng(0)
    for length in [2, 3, 10, 57, 100, 568, 1000]:
        for _ in range(20):
            mask = random_spans_noise_mask(length, 0.15, 3.0, rng)
            num_noise = min(max(round(length * 0.15), 1), length - 1)
            num_spans = max(round(num_noise / 3.0), 1)
            assert mask.shape == (length,) and mask.sum() == num_noise
            assert len(spans_of(mask)) == num_spans
            assert not mask[0] and mask[-1]  # interleaved non-noise first, ending on noise (as T5)


def test_statistics_over_many_draws():
    """Over many draws the noise density and mean span length are the ones asked for."""
    rng = np.random.default_rng(1)
    for density, mean_span in [(0.15, 3.0), (0.3, 8.0), (0.5, 2.0)]:
        noise, total, span_lengths = 0, 0, []
        for _ in range(1500):
            length = int(rng.integers(200, 800))
            mask = random_spans_noise_mask(length, density, mean_span, rng)
            noise += mask.sum()
            total += length
            span_lengths += [n for _, n in spans_of(mask)]
        assert abs(noise / total - density) < 0.002
        assert abs(np.mean(span_lengths) - mean_span) < 0.05 * mean_span
        # span lengths vary (random segmentation), not one fixed length
        assert np.std(span_lengths) > 0.3 * mean_span or mean_span <= 2.0
    # the spans land everywhere: every position is noise in some draw, at about the density
    hits = np.zeros(100)
    for _ in range(4000):
        hits += random_spans_noise_mask(100, 0.15, 3.0, rng)
    assert hits[0] == 0 and abs(hits[1:].mean() / 4000 - 0.15) < 0.01 and hits[1:].min() > 0


def test_span_corrupt_layout_and_exact_reconstruction():
    rng = np.random.default_rng(2)
    for length in [1, 2, 3, 5, 20, 100, 568, 1500]:
        for _ in range(30):
            ids = rng.integers(5, 30000, size=length).tolist()
            inputs, targets = span_corrupt(ids, 0.15, 3.0, sentinel_ids=SENTINELS, rng=rng)
            assert reconstruct(inputs, targets, SENTINELS) == ids
            k = sum(t in SENTINELS for t in inputs)
            # sentinels in order, once each, in inputs and targets alike
            assert [t for t in inputs if t in SENTINELS] == SENTINELS[:k]
            assert [t for t in targets if t in SENTINELS] == SENTINELS[:k]
            assert len(inputs) + len(targets) == length + 2 * k
            if targets:
                assert targets[0] == SENTINELS[0]


def test_span_corrupt_example():
    mask_rng, rng = np.random.default_rng(7), np.random.default_rng(7)
    ids = list(range(100, 120))
    mask = random_spans_noise_mask(20, 0.15, 3.0, mask_rng)
    inputs, targets = span_corrupt(ids, 0.15, 3.0, sentinel_ids=[1000, 1001, 1002], rng=rng)
    expected_inputs, expected_targets, span = [], [], -1
    for i, t in enumerate(ids):
        if mask[i] and (i == 0 or not mask[i - 1]):
            span += 1
            expected_inputs.append(1000 + span)
            expected_targets.append(1000 + span)
        (expected_targets if mask[i] else expected_inputs).append(t)
    assert (inputs, targets) == (expected_inputs, expected_targets)
    assert mask.sum() == 3 and len(targets) == 4  # round(20 * 0.15) = 3 tokens in round(3 / 3) = 1 span


def test_deterministic_given_rng_and_errors():
    ids = list(range(200))
    a = span_corrupt(ids, sentinel_ids=SENTINELS, rng=np.random.default_rng(3))
    b = span_corrupt(ids, sentinel_ids=SENTINELS, rng=np.random.default_rng(3))
    c = span_corrupt(ids, sentinel_ids=SENTINELS, rng=np.random.default_rng(4))
    assert a == b and a != c
    with pytest.raises(ValueError, match="sentinel ids"):
        span_corrupt(ids, sentinel_ids=SENTINELS[:3], rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs sentinel_ids"):
        span_corrupt(ids)
    with pytest.raises(ValueError, match="noise_density"):
        span_corrupt(ids, noise_density=1.0, sentinel_ids=SENTINELS)
    assert span_corrupt(ids, noise_density=0.0, sentinel_ids=SENTINELS) == (ids, [])


def test_random_spans_helper_is_t5s():
    assert random_spans_helper(512, 0.15, 3.0) == (568, 114)  # T5's and HF's run_t5_mlm numbers
    rng = np.random.default_rng(5)
    for inputs_length in [16, 64, 100, 128, 256, 512, 1024, 2048]:
        for density, span in [(0.15, 3.0), (0.5, 3.0), (0.25, 8.0)]:
            raw, target = random_spans_helper(inputs_length, density, span)
            inputs, targets = span_corrupt(list(range(raw)), density, span, sentinel_ids=MANY, rng=rng)
            assert len(inputs) + 1 <= inputs_length and len(targets) + 1 == target  # +1: EOS
            if density != 0.5:  # (T5 shortens the raw length by one at density 0.5)
                assert len(inputs) + 1 == inputs_length
                more, _ = span_corrupt(list(range(raw + 1)), density, span, sentinel_ids=MANY, rng=rng)
                assert len(more) + 1 > inputs_length  # the longest raw length that fits


# --- packed streams -------------------------------------------------------------------------------------------

TEXTS = [f"def function_{i}(x):\n    return x * {i} + {i % 7}  # note {i}\n" * (1 + i % 5) for i in range(60)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=420)


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return path


def test_span_corruption_stream_is_exact_and_reconstructs(tok, corpus_file):
    stream = pretraining_stream(open_corpus(corpus_file), tok, "encdec", input_len=64, seed=1)
    assert isinstance(stream, SpanCorruptionStream)
    raw_len, target_len = random_spans_helper(64)
    assert (stream.raw_len, stream.target_len) == (raw_len, target_len)
    reference = TokenStream(open_corpus(corpus_file), tok)
    sent = sentinel_ids(tok)
    for _, example in zip(range(40), stream):  # > 1 epoch: the stream repeats
        src, tgt = example["source_ids"], example["target_ids"]
        assert len(src) == 64 and len(tgt) == target_len
        assert src[-1] == tgt[-1] == tok.eos_token_id
        assert reconstruct(src[:-1], tgt[:-1], sent) == reference.take(raw_len)
    assert stream.tokens.tokens == 40 * raw_len == 40 * stream.tokens_per_example
    batch = pretraining_collator(ModelConfig.preset("encdec-tiny"))([example, example])
    assert batch["input_ids"].shape == (2, 64) and bool(batch["attention_mask"].all())  # packed: no padding
    assert batch["labels"].shape == (2, target_len) and (batch["labels"] != -100).all()


def test_streams_resume_exactly(tok, corpus_file):
    for arch in ("encdec", "deconly"):
        make = lambda: pretraining_stream(open_corpus(corpus_file), tok, arch, input_len=48, seed=3)  # noqa: B023
        straight = [e for _, e in zip(range(30), make())]
        first = make()
        head = [e for _, e in zip(range(11), first)]
        state = json.loads(json.dumps(first.state_dict()))
        second = make()
        second.load_state_dict(state)
        assert head + [e for _, e in zip(range(19), second)] == straight
        assert straight == [e for _, e in zip(range(30), make())]  # deterministic given the seed
    other_seed = pretraining_stream(open_corpus(corpus_file), tok, "encdec", input_len=48, seed=4)
    assert next(iter(other_seed)) != straight_first(tok, corpus_file)
    with pytest.raises(ValueError, match="'causal_lm' stream, not 'span_corruption'"):
        other_seed.load_state_dict({"kind": "causal_lm"})
    with pytest.raises(ValueError, match="114 spans per example but the tokenizer has 100 sentinels"):
        pretraining_stream(open_corpus(corpus_file), tok, "encdec", input_len=2048)


def straight_first(tok, corpus_file):
    return next(iter(pretraining_stream(open_corpus(corpus_file), tok, "encdec", input_len=48, seed=3)))


def test_causal_stream_has_the_same_token_budget(tok, corpus_file):
    enc = pretraining_stream(open_corpus(corpus_file), tok, "encdec", input_len=64)
    dec = pretraining_stream(open_corpus(corpus_file), tok, "deconly", input_len=64)
    raw = random_spans_helper(64)[0]
    assert isinstance(dec, CausalLMStream) and dec.tokens_per_example == enc.tokens_per_example == raw == 70
    enc_examples = [e for _, e in zip(range(12), enc)]
    dec_examples = [e for _, e in zip(range(12), dec)]
    assert enc.tokens.tokens == dec.tokens.tokens == 12 * raw
    # the same tokens, in the same order: the decoder-only model reads what the encoder-decoder corrupts
    sent = sentinel_ids(tok)
    recon = [t for e in enc_examples for t in reconstruct(e["source_ids"][:-1], e["target_ids"][:-1], sent)]
    assert recon == [t for e in dec_examples for t in e["input_ids"]]
    batch = pretraining_collator(ModelConfig.preset("deconly-tiny"))(dec_examples[:3])
    assert batch["input_ids"].shape == (3, raw) and bool((batch["labels"] == batch["input_ids"]).all())
    explicit = pretraining_stream(open_corpus(corpus_file), tok, "deconly", seq_len=32)
    assert len(next(iter(explicit))["input_ids"]) == 32
    with pytest.raises(ValueError, match="arch"):
        pretraining_stream(open_corpus(corpus_file), tok, "encoder")


def test_stream_without_repeat_ends(tok, corpus_file):
    stream = pretraining_stream(open_corpus(corpus_file), tok, "deconly", seq_len=50, repeat=False)
    examples = list(stream)
    total = stream.tokens.tokens
    assert examples and total == 50 * len(examples)
