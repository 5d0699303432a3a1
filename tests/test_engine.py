"""encore.Engine: continuous batching over a slot cache. Requests added mid-flight equal their solo
runs, cancel frees a slot at once, bad input is refused at `add`, the captured step equals eager."""

import pytest
import torch
from conftest import SeenOps, make_model
from test_model import padded_batch

from encore import Engine

VOCAB = 512


def run_all(engine: Engine, schedule: dict[int, list[dict]]) -> tuple[dict[int, list[int]], dict[int, str]]:
    """Step the engine; before step k, add the requests `schedule[k]` (kwargs of `add`). Returns each
    request's tokens and finish reason, by the index of its kwargs in the schedule's order."""
    tokens: dict[int, list[int]] = {}
    reasons: dict[int, str] = {}
    ids: dict[int, int] = {}
    order = [kw for k in sorted(schedule) for kw in schedule[k]]
    step = 0
    while step <= max(schedule) or engine.has_work():
        for kw in schedule.get(step, []):
            ids[engine.add(**kw)] = order.index(kw)
        for event in engine.step():
            i = ids[event.request_id]
            assert i not in reasons, "an event after the request finished"
            tokens.setdefault(i, []).append(event.token)
            if event.finished:
                reasons[i] = event.finish_reason
        step += 1
        assert step < 200
    return tokens, reasons


def solo(model, ids: list[int], n: int, side: str, **kwargs) -> list[int]:
    """What model.generate gives this request alone, laid out left- or right-padded beside a longer row."""
    rows = [torch.tensor(ids), torch.randint(3, VOCAB, (len(ids) + 3,), generator=torch.Generator().manual_seed(9))]
    batch, mask = padded_batch(rows, side)
    out = model.generate(batch, attention_mask=mask, max_new_tokens=n, **kwargs)[0].tolist()
    eos = kwargs.get("eos_token_id", model.config.eos_token_id)
    return out[: out.index(eos) + 1] if eos is not None and eos in out else out


@pytest.mark.parametrize("side", ["left", "right"])
def test_requests_added_mid_flight_equal_their_solo_runs(arch, side):
    model = make_model(arch)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (9, 4, 13, 6, 11)]
    new = [8, 5, 7, 8, 3]
    request = lambda i: {"input_ids": prompts[i], "max_new_tokens": new[i], "eos_token_id": None}
    # 3 slots for 5 requests: two start together, one joins at step 2, two wait in the queue for free slots
    engine = Engine(model, max_batch=3, max_input_len=16, max_new_tokens=8)
    tokens, reasons = run_all(engine, {0: [request(0), request(1)], 2: [request(2), request(3), request(4)]})
    for i in range(5):
        assert tokens[i] == solo(model, prompts[i], new[i], side, eos_token_id=None), f"request {i}"
        assert reasons[i] == "length" and len(tokens[i]) == new[i]
    assert len({t for ts in tokens.values() for t in ts}) > 5  # real, varied rollouts
    assert not engine.has_work() and engine.running == 0


def test_eos_stops_a_request_and_frees_its_slot(arch):
    model = make_model(arch)
    prompt = torch.randint(3, VOCAB, (7,), generator=torch.Generator().manual_seed(3)).tolist()
    free_run = solo(model, prompt, 6, "right", eos_token_id=None)
    eos = free_run[2]  # make the third token the end of sequence
    engine = Engine(model, max_batch=1, max_input_len=8, max_new_tokens=6)
    tokens, reasons = run_all(engine, {0: [{"input_ids": prompt, "eos_token_id": eos}, {"input_ids": prompt}]})
    assert tokens[0] == free_run[: free_run.index(eos) + 1] and reasons[0] == "stop"
    assert tokens[0] == solo(model, prompt, 6, "right", eos_token_id=eos)
    assert len(tokens[1]) == 6  # the queued request got the slot once the first stopped


def test_seeded_sampling_equals_generate(arch):
    model = make_model(arch)
    prompt = torch.randint(3, VOCAB, (5,), generator=torch.Generator().manual_seed(4)).tolist()
    settings = dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=7, eos_token_id=None)
    engine = Engine(model, max_batch=2, max_input_len=8, max_new_tokens=6)
    greedy = {"input_ids": prompt[::-1], "eos_token_id": None}
    tokens, _ = run_all(engine, {0: [greedy, {"input_ids": prompt, **settings}]})
    reference = model.generate(torch.tensor([prompt]), max_new_tokens=6, **settings)[0].tolist()
    assert tokens[1] == reference


def test_cancel_frees_the_slot_at_once():
    model = make_model("encdec")
    engine = Engine(model, max_batch=2, max_input_len=8, max_new_tokens=8)
    a = engine.add([5, 6, 7], eos_token_id=None)
    b = engine.add([8, 9], eos_token_id=None)
    c = engine.add([10, 11, 12], eos_token_id=None)
    engine.step()
    assert (engine.running, engine.queued) == (2, 1)
    assert engine.cancel(a) and engine.running == 1
    assert not engine.cancel(a) and not engine.cancel(12345)
    events = engine.step()
    assert {e.request_id for e in events} == {b, c}  # c took a's slot in the next step
    assert engine.cancel(c) and engine.running == 1
    d = engine.add([3, 4], eos_token_id=None)
    assert engine.cancel(d) and engine.queued == 0  # a queued request never runs
    while engine.has_work():
        assert {e.request_id for e in engine.step()} == {b}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"input_ids": []}, "empty"),
        ({"input_ids": list(range(3, 20))}, "17 tokens, more than this engine's max_input_len 16"),
        ({"input_ids": [3, VOCAB]}, rf"input_ids\[1\] = {VOCAB} is outside the vocabulary"),
        ({"input_ids": [3, -1]}, "outside the vocabulary"),
        ({"input_ids": [3, 4.5]}, "outside the vocabulary"),
        ({"input_ids": torch.ones(2, 3, dtype=torch.long)}, "1-D tensor"),
        ({"input_ids": torch.ones(3)}, "1-D tensor of token ids"),
        ({"input_ids": "hello"}, "sequence of token ids"),
        ({"input_ids": [3, 4], "max_new_tokens": 0}, "max_new_tokens"),
        ({"input_ids": [3, 4], "max_new_tokens": 9}, "more than this engine's 8"),
        ({"input_ids": [3, 4], "do_sample": True, "temperature": 0}, "temperature"),
        ({"input_ids": [3, 4], "do_sample": True, "top_p": 1.5}, "top_p"),
        ({"input_ids": [3, 4], "eos_token_id": VOCAB}, "eos_token_id"),
    ],
)
def test_bad_requests_are_refused_and_the_others_go_on(kwargs, message):
    model = make_model("deconly")
    engine = Engine(model, max_batch=2, max_input_len=16, max_new_tokens=8)
    good = engine.add([5, 6, 7], max_new_tokens=3, eos_token_id=None)
    with pytest.raises(ValueError, match=message):
        engine.add(**kwargs)
    assert engine.queued == 1
    events = [e for _ in range(3) for e in engine.step()]
    assert [e.request_id for e in events] == [good] * 3 and events[-1].finished


def test_engine_arguments_are_checked():
    model = make_model("deconly")
    with pytest.raises(ValueError, match="max_batch"):
        Engine(model, max_batch=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        Engine(model, max_input_len=model.config.max_seq_len, max_new_tokens=8)


def test_decode_step_reads_nothing_on_the_host(arch):
    """The pure step: no .item() / bool() / int() of a tensor (aten._local_scalar_dense), so it can be
    captured as a CUDA graph."""
    model = make_model(arch)
    engine = Engine(model, max_batch=2, max_input_len=8, max_new_tokens=4)
    engine.add([5, 6, 7])
    engine.admit()
    with torch.inference_mode(), SeenOps() as seen:
        model.decode_step(engine.tokens, engine.cache)
    assert "aten._local_scalar_dense" not in seen.ops and "aten.nonzero" not in seen.ops


def test_captured_step_equals_eager(arch):
    """The decode step compiled with fullgraph=True (no graph break: what CUDA graph capture and export
    need) gives the eager engine's tokens. aot_eager traces without generating code, so this stays quick."""
    model = make_model(arch)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (5, 7, 3)]
    schedule = {0: [{"input_ids": p, "max_new_tokens": 5, "eos_token_id": None} for p in prompts[:2]]}
    schedule[1] = [{"input_ids": prompts[2], "max_new_tokens": 4, "eos_token_id": None}]
    eager, _ = run_all(Engine(model, max_batch=4, max_input_len=8, max_new_tokens=5), schedule)
    torch._dynamo.reset()
    graphed = Engine(model, max_batch=4, max_input_len=8, max_new_tokens=5, graphs=True, compile_backend="aot_eager")
    assert graphed._graphs.buckets == [1, 2, 4]
    captured, _ = run_all(graphed, schedule)
    assert captured == eager


def test_prefill_groups_do_not_change_tokens(arch):
    """Requests admitted together are prefilled in groups of at most `prefill_tokens` padded tokens
    (activations that stay in the CPU's caches); any grouping gives the same tokens."""
    model = make_model(arch)
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (5, 12, 3, 8)]
    schedule = {0: [{"input_ids": p, "max_new_tokens": 4, "eos_token_id": None} for p in prompts]}
    together, _ = run_all(Engine(model, max_batch=4, max_input_len=12, max_new_tokens=4), schedule)
    engine = Engine(model, max_batch=4, max_input_len=12, max_new_tokens=4, prefill_tokens=16)
    assert [len(g) for g in engine._groups([type("R", (), {"input_len": len(p)})() for p in prompts])] == [1, 1, 2]
    alone, _ = run_all(engine, schedule)
    assert alone == together


def test_samples_of_one_prompt_share_its_prefill(arch):
    """n samples of one prompt admitted together are prefilled once (one encoder pass and cross-K/V
    projection, copied into each slot); each sample still equals its solo run."""
    model = make_model(arch)
    g = torch.Generator().manual_seed(8)
    a, b = (torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (6, 9))
    sample = lambda seed: {"input_ids": a, "do_sample": True, "seed": seed, "eos_token_id": None, "max_new_tokens": 5}
    engine = Engine(model, max_batch=4, max_input_len=12, max_new_tokens=5)
    greedy = {"input_ids": b, "eos_token_id": None, "max_new_tokens": 5}
    tokens, _ = run_all(engine, {0: [sample(1), greedy, sample(2), sample(3)]})
    assert engine.prefilled_rows == 2  # two distinct prompts for four requests
    for i, seed in ((0, 1), (2, 2), (3, 3)):
        reference = model.generate(torch.tensor([a]), max_new_tokens=5, do_sample=True, seed=seed, eos_token_id=None)
        assert tokens[i] == reference[0].tolist(), f"sample {i}"
    assert tokens[1] == solo(model, b, 5, "right", eos_token_id=None)
    assert len({tuple(tokens[i]) for i in (0, 2, 3)}) > 1  # different seeds, different samples


def test_prefill_budget_spreads_a_burst_over_steps(arch):
    """With max_prefill_tokens a step admits prompts up to that many tokens (at least one request; n
    samples of one prompt count once); the rest wait a step, and tokens do not change."""
    model = make_model(arch)
    g = torch.Generator().manual_seed(10)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (6, 5, 12, 4)]
    requests = [{"input_ids": p, "max_new_tokens": 4, "eos_token_id": None} for p in prompts]
    requests.insert(1, {**requests[0], "seed": 1})  # a second sample of the first prompt: free within the budget
    free, _ = run_all(Engine(model, max_batch=5, max_input_len=12, max_new_tokens=4), {0: requests})
    engine = Engine(model, max_batch=5, max_input_len=12, max_new_tokens=4, max_prefill_tokens=12)
    for r in requests:
        engine.add(**r)
    assert len(engine.admit()) == 3 and engine.queued == 2  # 6 (+6 shared) + 5 fit 12; then 12 does not
    assert len(engine.admit()) == 1 and len(engine.admit()) == 1  # 12 alone; then 4
    engine = Engine(model, max_batch=5, max_input_len=12, max_new_tokens=4, max_prefill_tokens=12)
    budgeted, _ = run_all(engine, {0: requests})
    assert budgeted == free
    with pytest.raises(ValueError, match="max_prefill_tokens"):
        Engine(model, max_prefill_tokens=0)
