"""Beam search with transformers' tokens and scores (`sequences_scores`), on tiny random models of an
encoder-decoder with T5's relative bias, BART's post-norm blocks, T5Gemma's, and a Llama; the settings
translation and summarization checkpoints ship, alone and with the logits processors."""

from __future__ import annotations

import copy

import pytest
import torch
from test_convert import FAMILIES, _batch, _reference

from encore.convert import load
from encore.infer.generate import Beams, generate_beams

transformers = pytest.importorskip("transformers")

STEPS = 16
EOS = 1
CASES = [
    dict(num_beams=4),
    dict(num_beams=4, num_return_sequences=3),
    dict(num_beams=3, length_penalty=2.0, early_stopping=True),
    dict(num_beams=4, early_stopping="never", length_penalty=0.5),
    dict(num_beams=4, repetition_penalty=1.5),
    dict(num_beams=4, no_repeat_ngram_size=2),
    dict(num_beams=3, no_repeat_ngram_size=3, length_penalty=2.0, min_new_tokens=4),
]


@pytest.fixture(scope="module", params=["t5", "bart", "t5gemma", "llama"])
def pair(request, tmp_path_factory):
    hf = _reference(FAMILIES[request.param])
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    hf.generation_config.eos_token_id = EOS
    return hf, load(directory)


def _cut(row: list[int]) -> list[int]:
    return row[: row.index(EOS) + 1] if EOS in row else row


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_beam_search_matches_transformers(pair, case):
    hf, model = pair
    ids, mask = _batch("right")
    beam_keys = {k: v for k, v in case.items() if k in Beams.__dataclass_fields__}
    processing = {k: v for k, v in case.items() if k not in beam_keys}
    # a decoder-only batch row by row (transformers generates after a right-padded prompt's pads)
    rows = (
        [(ids, mask)]
        if hf.config.is_encoder_decoder
        else [(ids[i : i + 1, : int(m.sum())], None) for i, m in enumerate(mask)]
    )
    for row_ids, row_mask in rows:
        with torch.no_grad():
            out = hf.generate(
                input_ids=row_ids, attention_mask=row_mask, max_new_tokens=STEPS, do_sample=False,
                output_scores=True, return_dict_in_generate=True, **case,
            )  # fmt: skip
        start = 1 if hf.config.is_encoder_decoder else row_ids.shape[1]
        theirs = [_cut(r) for r in out.sequences[:, start:].tolist()]
        tokens, scores = generate_beams(model, row_ids, row_mask, STEPS, Beams(**beam_keys), EOS, **processing)
        assert [_cut(r) for r in tokens.tolist()] == theirs
        torch.testing.assert_close(scores, out.sequences_scores.float(), atol=1e-4, rtol=1e-4)


def test_generate_takes_num_beams_from_the_generation_config(pair):
    hf, model = pair
    ids, mask = _batch("right")
    ids, mask = ids[:1], mask[:1]
    saved = dict(model.generation_config)
    try:
        model.generation_config = {**saved, "num_beams": 3, "length_penalty": 0.8}
        expected = generate_beams(model, ids, mask, STEPS, Beams(num_beams=3, length_penalty=0.8), EOS)[0]
        assert model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, eos_token_id=EOS).tolist() == (
            expected.tolist()
        )
        greedy = model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, eos_token_id=EOS, num_beams=1)
        assert greedy.shape == (1, STEPS)
    finally:
        model.generation_config = saved


@pytest.mark.parametrize(
    "given,message",
    [
        (dict(num_beams=0), "num_beams must be an integer >= 1"),
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences 3 is more than num_beams 2"),
        (dict(num_beams=2, early_stopping="sometimes"), "early_stopping must be True, False or 'never'"),
        (dict(num_beams=2, do_sample=True), "beam sampling"),
    ],
)
def test_bad_beam_settings_are_named(pair, given, message):
    _, model = pair
    with pytest.raises(ValueError, match=message):
        model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=3, **given)


def _engine_run(engine, requests):
    """Queue `requests` (kwargs of Engine.add) and step until done: request index -> its events."""
    rids = {engine.add(**r): i for i, r in enumerate(requests)}
    events: dict[int, list] = {i: [] for i in rids.values()}
    while engine.has_work():
        for e in engine.step():
            events[rids[e.request_id]].append(e)
    return events


def test_engine_beam_requests_equal_generate_alone(pair):
    """Beam requests (two settings) and a greedy one share the engine's batch; each result is what
    `generate_beams` / `generate` give that request alone, and a beam request is one finished event."""
    from encore.infer.engine import Engine

    hf, model = pair
    ids, mask = _batch("right")
    prompts = [ids[0].tolist(), ids[1, : int(mask[1].sum())].tolist()]
    settings = [
        dict(num_beams=4, no_repeat_ngram_size=2),
        dict(num_beams=3, num_return_sequences=2, length_penalty=2.0),
    ]
    requests = [dict(input_ids=prompts[0], eos_token_id=EOS, **settings[0])]
    requests += [dict(input_ids=prompts[1], eos_token_id=EOS, num_beams=1)]
    requests += [dict(input_ids=prompts[1], eos_token_id=EOS, **settings[1])]
    engine = Engine(model, max_batch=8, max_input_len=16, max_new_tokens=STEPS)
    events = _engine_run(engine, requests)
    for i, setting in ((0, settings[0]), (2, settings[1])):
        beam_keys = {k: v for k, v in setting.items() if k in Beams.__dataclass_fields__}
        processing = {k: v for k, v in setting.items() if k not in beam_keys}
        tokens, scores = generate_beams(
            model, torch.tensor([requests[i]["input_ids"]]), None, STEPS, Beams(**beam_keys), EOS, **processing
        )
        (event,) = events[i]
        assert event.finished and event.sequences == [_cut(r) for r in tokens.tolist()]
        assert event.tokens == event.sequences[0]
        torch.testing.assert_close(torch.tensor(event.scores), scores, atol=1e-4, rtol=1e-4)
    greedy = model.generate(torch.tensor([prompts[1]]), max_new_tokens=STEPS, eos_token_id=EOS, num_beams=1)
    assert [e.token for e in events[1]] == _cut(greedy[0].tolist())
    assert not engine.has_work() and engine.running == 0


def test_engine_beam_request_waits_for_its_slots_and_frees_them(pair):
    from encore.infer.engine import Engine

    _, model = pair
    engine = Engine(model, max_batch=4, max_input_len=16, max_new_tokens=6)
    first = engine.add([3, 4, 5], num_beams=1, eos_token_id=None)
    beam = engine.add([5, 6, 7], num_beams=4, eos_token_id=None)
    engine.step()
    assert engine.running == 1 and engine.queued == 1  # 3 slots free: not enough for 4 beams
    finished = []
    while engine.has_work():
        finished += [e.request_id for e in engine.step() if e.finished]
        if beam not in finished:
            assert engine.running in (0, 1, 4)
    assert finished == [first, beam] and engine.running == 0
    with pytest.raises(ValueError, match="num_beams 5 is more than this engine's 4 slots"):
        engine.add([3, 4], num_beams=5)
    with pytest.raises(ValueError, match="logprobs is not given for beam search"):
        engine.add([3, 4], num_beams=2, logprobs=1)


def test_engine_beams_read_one_cross_copy_in_the_fused_layer(pair):
    """Optimized (the fused C decode layer), a beam request's slots read its first slot's cross K/V
    (`cache.cross_from`); its beams still equal `generate_beams`' of the same optimized model."""
    from encore.infer.engine import Engine
    from encore.infer.optimize import optimize

    hf, model = pair
    if not hf.config.is_encoder_decoder:
        pytest.skip("a decoder-only model has no cross K/V")
    fused = optimize(copy.deepcopy(model))
    engine = Engine(fused, max_batch=6, max_input_len=16, max_new_tokens=STEPS)
    prompts = [[5, 9, 14, 3, 22], [7, 7, 30, 41]]
    rids = [engine.add(p, num_beams=3, eos_token_id=EOS) for p in prompts]
    engine.step()
    assert engine.cache.cross_from.tolist() == [0, 0, 0, 3, 3, 3]
    events = {}
    while engine.has_work():
        events.update({e.request_id: e for e in engine.step() if e.finished})
    for rid, prompt in zip(rids, prompts):
        tokens, _ = generate_beams(fused, torch.tensor([prompt]), None, STEPS, Beams(num_beams=3), EOS)
        assert events[rid].sequences == [_cut(r) for r in tokens.tolist()]
