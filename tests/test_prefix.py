"""Prefix reuse for the decoder-only engine: a prefill after stored K/V equals the full prefill, the
store keeps whole blocks keyed by content and evicts from a chain's end, and a chat-like sequence of
requests through `encore.Engine` gives the same greedy tokens with reuse as without."""

import torch
from conftest import make_model

from encore.infer.engine import Engine
from encore.infer.prefix import PrefixStore


def test_a_prefill_after_cached_positions_equals_the_whole_prefill():
    for window in (0, 5):
        types = ["sliding", "full"] if window else []
        model = make_model("deconly", sliding_window=window, decoder_layer_types=types).eval()
        ids = torch.randint(3, 500, (1, 23))
        with torch.no_grad():
            whole, cache = model.prefill(ids, None, 4)
            logits, after = model.prefill_after(ids[:, 16:], cache.k[:, 0, :, :16], cache.v[:, 0, :, :16], 4)
        torch.testing.assert_close(logits, whole, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(after.k[:, :, :, :23], cache.k[:, :, :, :23], rtol=1e-4, atol=1e-5)
        assert int(after.length) == 23


def test_the_store_matches_whole_blocks_and_evicts_from_a_chain_end():
    L, K, Dh = 2, 1, 4
    kv = lambda n: torch.arange(L * K * n * Dh, dtype=torch.float32).view(L, K, n, Dh)  # noqa: E731
    store = PrefixStore(block=4, budget_bytes=3 * 2 * L * K * 4 * Dh * 4)  # room for three blocks
    tokens = list(range(10))
    store.put(tokens, kv(10), kv(10))
    assert len(store.blocks) == 2  # 0-3, 4-7; the last two tokens are no whole block
    assert store.match(tokens) == 8 and store.match(tokens[:8]) == 4  # one token always left to prefill
    assert store.match([0, 1, 2, 9, 4]) == 0  # content decides, not length
    k, v = store.gather(tokens, 8)
    assert torch.equal(k, kv(10)[:, :, :8])
    store.put([7, 7, 7, 7, 7], kv(5), kv(5))  # a third block, then a fourth: past the budget
    store.put([5, 5, 5, 5, 5], kv(5), kv(5))
    assert store.nbytes <= store.budget and store.match(tokens) == 4  # the chain lost its end first


def test_the_engine_reuses_earlier_turns_and_gives_the_same_tokens():
    model = make_model("deconly").eval()
    torch.manual_seed(1)
    system = torch.randint(3, 500, (40,)).tolist()
    turns = [torch.randint(3, 500, (n,)).tolist() for n in (7, 12, 5)]

    def conversation(engine):
        history, replies = list(system), []
        for user in turns:
            history = history + user
            rid = engine.add(history, max_new_tokens=6, eos_token_id=None)
            reply = []
            while engine.has_work():
                reply += [e.token for e in engine.step() if e.request_id == rid]
            replies.append(reply)
            history = history + reply
        return replies

    plain = conversation(Engine(model, max_batch=2, max_input_len=128, max_new_tokens=8))
    engine = Engine(model, max_batch=2, max_input_len=128, max_new_tokens=8, prefix_cache_bytes=1 << 20, prefix_block=8)
    assert conversation(engine) == plain
    assert engine.prefix.hits == 2 and engine.prefix.reused_tokens >= 40 + 7 + 6


def test_the_chat_workload_bench_runs_both_architectures(tmp_path):
    import json

    from encore.cli import main

    out = tmp_path / "chat.json"
    argv = ["bench", "--workload", "chat", "--model", "encdec-tiny", "--baseline", "deconly-tiny", "--turns", "3",
            "--user-len", "8", "--reply-len", "4", "--repeats", "1", "--json", str(out), "--plot", "",
            "--peak-gflops", "10"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())
    labels = [r["label"] for r in data["results"]]
    assert labels == ["encoder-decoder", "decoder-only", "decoder-only + prefix reuse"]
    for r in data["results"]:
        assert [t["input_tokens"] for t in r["turns"]] == [8, 20, 32]
        assert all(t["ttft_s"] > 0 and t["predicted_prefill_s"] > 0 for t in r["turns"])
    reuse = data["results"][2]["turns"]
    assert reuse[2]["predicted_prefill_s"] < data["results"][1]["turns"][2]["predicted_prefill_s"]
    assert set(data["crossover"]) == {"decoder-only", "decoder-only + prefix reuse"}
