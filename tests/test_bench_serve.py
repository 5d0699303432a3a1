"""`encore bench --serve`: the seeded workload, exact prompt lengths, the summary's arithmetic, the
cost model's capacity, and one end-to-end run of two tiny servers."""

import json
import random

import pytest

from encore.bench.costmodel import Machine
from encore.bench.serving import ServeBenchConfig, at_rate, predict, prompt_text, summarize, word_tokens, workload
from encore.cli import main
from encore.config import ModelConfig
from encore.data.collate import prompt_ids
from encore.data.vocab import default_tokenizer
from encore.model import resolve_model
from encore.model.cache import GenerationCache


def test_workload_is_seeded_poisson_with_lengths_in_range():
    cfg = ServeBenchConfig(requests=400, input_len=100, output_len=40, spread=0.5, seed=3)
    a, b = workload(cfg, 2.0), workload(cfg, 2.0)
    assert a == b and workload(ServeBenchConfig(requests=400, seed=4), 2.0) != a
    arrivals = [r.arrival_s for r in a]
    assert arrivals == sorted(arrivals) and arrivals[0] > 0
    assert 1 / 2.0 * 0.85 < arrivals[-1] / len(a) < 1 / 2.0 * 1.15  # mean gap ~ 1 / rate
    assert {r.words + 2 for r in a} <= set(range(50, 101)) and {r.max_tokens for r in a} <= set(range(20, 41))
    assert len({r.words for r in a}) > 30 and len({r.max_tokens for r in a}) > 15  # really spread


def test_prompts_have_exactly_the_planned_token_count():
    tokenizer = default_tokenizer()
    words, rng = word_tokens(tokenizer), random.Random(0)
    for n in (1, 7, 382, 510):
        text = prompt_text(words, n, rng)
        assert len(prompt_ids(tokenizer, text, ModelConfig.preset("deconly-tiny"))) == n + 2  # + BOS and EOS
        assert len(prompt_ids(tokenizer, text, ModelConfig.preset("encdec-tiny"))) == n + 1


def test_summary_of_known_records():
    def record(sent, first, gap, n):
        return {
            "ok": True,
            "sent": sent,
            "stamps": [first + i * gap for i in range(n)],
            "max_tokens": n,
            "prompt_tokens": 10,
        }

    run = {"t0": 0.0, "slots": [(0.5, 2.0), (1.0, 4.0)]}
    run["records"] = [
        record(0.0, 1.0, 0.1, 11),
        record(1.0, 1.5, 0.2, 6),
        {"ok": False, "error": "boom", "max_tokens": 5, "prompt_tokens": 10},
    ]
    m = summarize(run)
    assert (m["requests"], m["completed"], m["failed"], m["errors"]) == (3, 2, 1, ["boom"])
    assert m["duration_s"] == pytest.approx(2.5)  # the last token at 1.5 + 5 * 0.2
    assert m["output_tokens_per_s"] == pytest.approx(17 / 2.5) and m["requests_per_s"] == pytest.approx(2 / 2.5)
    assert m["ttft_p50_s"] == pytest.approx(0.5) and m["ttft_p99_s"] == pytest.approx(1.0)
    assert m["itl_p50_s"] == pytest.approx(0.1) and m["itl_p99_s"] == pytest.approx(0.2)
    assert (m["slots_in_use_mean"], m["slots_in_use_max"]) == (3.0, 4.0)


def test_capacity_grows_with_slots_and_caps_the_offered_load():
    cfg = ServeBenchConfig(input_len=512, output_len=128)
    machine = Machine(1e12, 40e9)
    config = resolve_model("encdec-330m")[0]
    small, large = predict(config, 4, cfg, machine, 1), predict(config, 32, cfg, machine, 1)
    assert large["capacity_requests_per_s"] > small["capacity_requests_per_s"]
    per_request = small["prefill_s"] + 112 * small["decode_step_s"] / 4  # 112: the mean of 96..128
    assert small["capacity_requests_per_s"] == pytest.approx(1 / per_request)
    cap = small["capacity_requests_per_s"]
    assert at_rate(small, cap / 2) == {
        "requests_per_s": cap / 2,
        "output_tokens_per_s": cap / 2 * 112,
        "saturated": False,
    }
    assert at_rate(small, cap * 2)["requests_per_s"] == cap and at_rate(small, cap * 2)["saturated"]


def test_bad_serve_flags_are_named(capsys):
    assert main(["bench", "--serve", "--serve-spread", "1.5"]) == 2
    assert "--serve-spread" in capsys.readouterr().err
    assert main(["bench", "--serve", "--quantize", "none", "int8"]) == 2
    assert "one --quantize" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_serve_end_to_end_on_tiny_presets(tmp_path, capsys):
    out = tmp_path / "serve.json"
    argv = ["bench", "--serve", "--model", "encdec-tiny", "--baseline", "deconly-tiny", "--input-len", "48"]
    argv += ["--output-len", "8", "--serve-requests", "6", "--serve-rate", "30", "--kv-budget-mb", "2"]
    argv += ["--warmup", "1", "--json", str(out), "--plot", str(tmp_path / "serve.png")]
    argv += ["--peak-gflops", "100", "--bandwidth-gbs", "20", "--kv-cache-dtype", "fp16"]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    encdec, deconly = doc["results"]
    for r in doc["results"]:
        [run] = r["runs"]
        m = run["measured"]
        assert (m["completed"], m["failed"]) == (6, 0) and r["server_exit_code"] == 0
        assert m["ttft_p50_s"] > 0 and m["output_tokens_per_s"] > 0
        assert r["slots"] == int(2 * 2**20 // r["kv_bytes_per_slot"])  # the budget decides the slots
        config = resolve_model(r["model"])[0]  # the servers' K/V in fp16: 2 bytes a value
        assert r["kv_bytes_per_slot"] == GenerationCache.bytes_for(config, 48, 8, dtype_bytes=2)
    assert encdec["slots"] > 2 * deconly["slots"]  # ~3x smaller cache per request
    assert doc["ratios"][0]["slots"] == encdec["slots"] / deconly["slots"]
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    report = capsys.readouterr().out
    assert "encdec-tiny / deconly-tiny" in report and "6/6" in report
    assert main(["bench", "--from-json", str(out), "--plot", ""]) == 0
    assert "encdec-tiny" in capsys.readouterr().out
