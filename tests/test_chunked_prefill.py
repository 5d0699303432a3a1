"""Chunked prefill (`Engine(prefill_chunk=N)`): a long prompt prefilled in pieces gives the unchunked
engine's tokens (decoder-only by tokens, a sliding window and prefix reuse included; encoder-decoder by
encoder layers), the running requests get a token every step meanwhile, a cancel mid-prefill frees the
slot, and a bad `prefill_chunk` is refused."""

from dataclasses import replace

import pytest
import torch
from conftest import make_model
from test_engine import VOCAB, run_all

from encore import Engine


def prompts(seed: int, lengths: tuple[int, ...]) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def greedy(ids: list[int], n: int) -> dict:
    return {"input_ids": ids, "max_new_tokens": n, "eos_token_id": None}


@pytest.mark.parametrize("window", [0, 5])
def test_chunked_prefill_gives_the_unchunked_tokens(arch, window):
    """Two short requests run; two long prompts arrive (one at the start, one mid-flight) and are
    prefilled in pieces of 8 tokens (deconly: 5 pieces of 37; encdec: one of its 2 encoder layers per
    step); a beam request and two samples of one long prompt keep the whole prefill."""
    if window and arch == "encdec":
        pytest.skip("the window only changes the decoder-only prompt's attention")
    types = {"decoder_layer_types": ["sliding", "full"], "sliding_window": window} if window else {}
    model = make_model(arch, **types)
    short_a, short_b, long_a, long_b = prompts(11, (5, 7, 37, 29))
    schedule = {
        0: [greedy(short_a, 10), greedy(long_a, 6), greedy(short_b, 9)],
        2: [greedy(long_b, 5), {**greedy(short_b[::-1], 4), "num_beams": 2}],
        3: [{**greedy(long_a[:30], 4), "do_sample": True, "seed": s} for s in (1, 2)],
    }
    whole, _ = run_all(Engine(model, max_batch=8, max_input_len=40, max_new_tokens=10), schedule)
    engine = Engine(model, max_batch=8, max_input_len=40, max_new_tokens=10, prefill_chunk=8)
    chunked, reasons = run_all(engine, schedule)
    assert chunked == whole
    assert all(reason == "length" for reason in reasons.values()) and engine.running == 0
    assert not engine.chunks.pending and len({t for ts in chunked.values() for t in ts}) > 10


def test_chunks_continue_after_a_reused_prefix():
    """Prefix reuse (decoder-only) and chunking together: the rest after a stored prefix is prefilled
    in pieces, and the tokens are those without either."""
    model = make_model("deconly")
    system, turn = prompts(12, (24, 30))
    schedule = {0: [greedy(system, 3)], 4: [greedy(system + turn, 5)]}
    plain, _ = run_all(Engine(model, max_batch=2, max_input_len=64, max_new_tokens=5), schedule)
    engine = Engine(
        model, max_batch=2, max_input_len=64, max_new_tokens=5, prefix_cache_bytes=1 << 20, prefix_block=8,
        prefill_chunk=8,
    )  # fmt: skip
    assert run_all(engine, schedule)[0] == plain
    assert engine.prefix.hits == 1 and engine.prefix.reused_tokens >= 24


def test_running_requests_get_a_token_every_step_while_a_long_prompt_is_chunked(arch):
    model = make_model(arch)
    short, long = prompts(13, (4, 40))
    engine = Engine(model, max_batch=2, max_input_len=40, max_new_tokens=12, prefill_chunk=8)
    running = engine.add(short, max_new_tokens=12, eos_token_id=None)
    engine.step()
    waiting = engine.add(long, max_new_tokens=3, eos_token_id=None)
    steps = 0
    while True:
        events = engine.step()
        steps += 1
        assert running in {e.request_id for e in events}, f"step {steps}: the running request got no token"
        if waiting in {e.request_id for e in events}:
            break
    # deconly: 40 tokens in 5 pieces of 8; encdec: 2 encoder layers over 40 positions, one layer per step
    assert steps == (5 if arch == "deconly" else 2)


def test_cancel_mid_prefill_frees_the_slot(arch):
    model = make_model(arch)
    long, short = prompts(14, (40, 6))
    engine = Engine(model, max_batch=1, max_input_len=40, max_new_tokens=4, prefill_chunk=8)
    rid = engine.add(long, eos_token_id=None)
    assert engine.step() == [] and engine.running == 1 and engine.chunks.pending
    assert engine.cancel(rid) and engine.running == 0 and not engine.chunks.pending
    assert not engine.has_work() and not engine.cancel(rid)
    tokens, _ = run_all(engine, {0: [greedy(short, 4)]})  # the freed slot serves the next request as new
    fresh = Engine(model, max_batch=1, max_input_len=40, max_new_tokens=4)
    assert tokens == run_all(fresh, {0: [greedy(short, 4)]})[0]


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "256"])
def test_a_bad_prefill_chunk_is_refused(bad):
    with pytest.raises(ValueError, match="prefill_chunk"):
        Engine(make_model("deconly"), max_batch=1, max_input_len=8, max_new_tokens=2, prefill_chunk=bad)


def test_the_server_and_the_serving_bench_pass_prefill_chunk_on(capsys):
    pytest.importorskip("fastapi")
    import argparse

    from encore.bench.serving import ServeBenchConfig, serve_command
    from encore.cli import main
    from encore.cli import serve as serve_cli
    from encore.cli.common import from_args
    from encore.data.vocab import default_tokenizer
    from encore.serve import ServerConfig, build_app

    parser = argparse.ArgumentParser()
    serve_cli.configure(parser)
    cfg = from_args(ServerConfig, parser.parse_args(["--model", "m", "--prefill-chunk", "16", "--max-input-len", "64"]))
    model = make_model("deconly")
    model.tokenizer = default_tokenizer()
    _, scheduler = build_app(replace(cfg, max_tokens=8, kv_budget_mb=4), model)
    assert scheduler.engine.chunks.chunk == 16
    with pytest.raises(ValueError, match="--prefill-chunk"):
        build_app(replace(cfg, prefill_chunk=0), model)
    assert ServerConfig(model="m").prefill_chunk is None  # off by default
    command = serve_command("deconly-tiny", ServeBenchConfig(prefill_chunk=16), 8000)
    assert command[-2:] == ["--prefill-chunk", "16"] and "--prefill-chunk" not in serve_command(
        "m", ServeBenchConfig(), 1
    )
    assert main(["bench", "--serve", "--prefill-chunk", "0"]) == 2
    assert "--prefill-chunk" in capsys.readouterr().err
