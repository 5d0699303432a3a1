"""`encore bench` end to end on the tiny presets: JSON against its schema, the plot, the CLI, --vs-hf."""

import json

import pytest
import torch

from encore import ModelConfig
from encore.bench import (
    PAPER,
    RESULT_FIELDS,
    BenchConfig,
    hf_llama_config,
    hf_t5_config,
    plan_points,
    run_bench,
    validate_bench_json,
)
from encore.cli import main
from encore.model.layers import cpu_linear

# a fixed roofline skips the machine probes; a few tokens keep every run in milliseconds
TINY = dict(
    model="encdec-tiny",
    baseline="deconly-tiny",
    input_lens=(16,),
    output_len=4,
    repeats=2,
    warmup=1,
    sweep=(),
    peak_flops=1e11,
    mem_bandwidth=2e10,
    progress=False,
    isolate=False,  # the CLI test covers worker processes
)


def test_defaults_are_the_papers_comparison():
    cfg = BenchConfig()
    assert (cfg.model, cfg.baseline, cfg.input_lens, cfg.output_len, cfg.batch_sizes) == (
        "encdec-330m",
        "deconly-330m",
        (512,),
        128,
        (1,),
    )
    points = plan_points(cfg)
    assert [(p.input_len, p.output_len, p.kind) for p in points] == [
        (512, 128, "full"),
        (128, 16, "sweep"),
        (256, 16, "sweep"),
        (1024, 16, "sweep"),
        (2048, 16, "sweep"),
    ]
    assert cfg.isolate and cfg.repeats == 3 and cfg.sweep_repeats == 3
    assert max(p.input_len for p in plan_points(BenchConfig(device="cuda"))) == 8192
    assert cfg.resolved_dtype() == "float32" and BenchConfig(device="cuda").resolved_dtype() == "bfloat16"


def test_end_to_end_json_plot_and_report(tmp_path, capsys):
    json_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    cfg = BenchConfig(
        **{**TINY, "sweep": (8, 32), "sweep_output_len": 3, "sweep_repeats": 1},
        json_path=str(json_path),
        plot_path=str(plot_path),
    )
    doc = run_bench(cfg)
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(doc))
    validate_bench_json(json.loads(json_path.read_text()))
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["device"] == "cpu" and doc["threads"] == torch.get_num_threads() and doc["torch"] == torch.__version__
    assert doc["cpu_linear"] == cpu_linear()

    results = doc["results"]
    assert {(r["model"], r["input_len"], r["output_len"]) for r in results} == {
        (m, s, n) for m in ("encdec-tiny", "deconly-tiny") for s, n in ((16, 4), (8, 3), (32, 3))
    }
    for r in results:
        assert r["backend"] == "torch" and r["dtype"] == "float32" and r["batch_size"] == 1
        assert r["arch"] == ("encdec" if r["model"].startswith("encdec") else "deconly")
        lo, hi = r["spread"]["first_token_latency_s"]
        assert 0 < lo <= r["first_token_latency_s"] <= hi
        assert r["decode_tokens_per_s"] > 0 and r["throughput_tokens_per_s"] > 0
        assert r["peak_memory_bytes"] > 0 and r["flops"] > r["prefill_flops"] > 0
        assert 0 < r["inter_token_latency_s"] <= r["inter_token_latency_p90_s"]
    head = {r["arch"]: r for r in results if r["input_len"] == 16}
    # KV cache: encdec = 2 decoder layers over (4 outputs + 16 inputs); deconly = 6 layers over 20 positions
    per_position = 2 * 2 * 64 * 4  # K+V * kv heads * head_dim * fp32
    assert head["encdec"]["kv_cache_bytes"] == 2 * 20 * per_position
    assert head["deconly"]["kv_cache_bytes"] == 6 * 20 * per_position

    full = [c for c in doc["comparisons"] if c["kind"] == "full"]
    assert len(full) == 1 and full[0]["measured"]["kv_cache_ratio"] == pytest.approx(1 / 3)
    m = full[0]["measured"]
    assert m["decode_speedup"] == pytest.approx(
        head["encdec"]["decode_tokens_per_s"] / head["deconly"]["decode_tokens_per_s"]
    )
    assert m["inter_token_speedup"] == pytest.approx(
        head["deconly"]["inter_token_latency_s"] / head["encdec"]["inter_token_latency_s"]
    )
    assert len(doc["comparisons"]) == 3  # one per input length
    out = capsys.readouterr().out
    assert "encdec-tiny vs deconly-tiny, 16->4, batch 1:" in out and "paper" in out
    assert f"{-100 * PAPER['first_token_latency_reduction']:+.0f}%" in out and "input-length sweep" in out


def test_schema_names_what_is_wrong():
    doc = {"device": "cpu", "torch": "2", "threads": 2, "results": [dict.fromkeys(RESULT_FIELDS, 1)]}
    doc["results"][0].update(model="m", arch="encdec", backend="torch", dtype="float32")
    validate_bench_json(doc)
    del doc["results"][0]["flops"]
    doc["results"][0]["arch"] = "rnn"
    doc["threads"] = True
    with pytest.raises(ValueError) as e:
        validate_bench_json(doc)
    assert "results[0].flops" in str(e.value) and "results[0].arch" in str(e.value) and "threads" in str(e.value)


def test_vs_hf_on_tiny_shapes():
    doc = run_bench(BenchConfig(**{**TINY, "repeats": 1, "warmup": 0}, vs_hf=True, json_path=None, plot_path=None))
    by_model = {r["model"]: r for r in doc["results"]}
    t5, llama = by_model["hf-t5 (encdec-tiny)"], by_model["hf-llama (deconly-tiny)"]
    assert (t5["backend"], t5["arch"], llama["arch"]) == ("transformers", "encdec", "deconly")
    # same shapes: Llama's 2/3-wide SwiGLU keeps the parameters within 1%; T5 has ungrouped K/V
    assert llama["params"] == pytest.approx(by_model["deconly-tiny"]["params"], rel=0.01)
    assert t5["kv_cache_bytes"] == 2 * by_model["encdec-tiny"]["kv_cache_bytes"]  # 4 KV heads vs 2
    pairs = {(c["model"], c["baseline"]) for c in doc["comparisons"]}
    assert ("encdec-tiny", "hf-t5 (encdec-tiny)") in pairs and ("deconly-tiny", "hf-llama (deconly-tiny)") in pairs
    assert "transformers" in doc


def test_hf_shapes_of_the_330m_pair():
    """--vs-hf builds exactly the T5 the core speed bar names, and a Llama matching deconly-330m."""
    t5 = hf_t5_config(ModelConfig.preset("encdec-330m"))
    assert (t5.d_model, t5.num_layers, t5.num_decoder_layers, t5.num_heads, t5.d_kv, t5.d_ff, t5.vocab_size) == (
        1024,
        20,
        10,
        6,
        64,
        4096,
        32128,
    )
    assert t5.feed_forward_proj == "gelu_new" and t5.use_cache and t5.tie_word_embeddings
    dec = ModelConfig.preset("deconly-330m")
    llama = hf_llama_config(dec)
    assert (llama.hidden_size, llama.num_hidden_layers, llama.num_attention_heads, llama.num_key_value_heads) == (
        1024,
        31,
        6,
        3,
    )
    assert llama.head_dim == 64 and llama.intermediate_size == 2731 and llama.tie_word_embeddings
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        params = sum(p.numel() for p in LlamaForCausalLM(llama).parameters())
    assert params == pytest.approx(dec.param_counts()["total"], rel=0.005)


def test_cli(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["bench", "--model", "encdec-tiny", "--baseline", "deconly-tiny", "--input-len", "12", "--output-len", "3"]
    argv += ["--repeats", "1", "--warmup", "0", "--no-sweep", "--json", str(out), "--plot", "", "--quiet"]
    argv += ["--peak-gflops", "100", "--bandwidth-gbs", "20", "--cpu-linear", "aten"]
    before = cpu_linear()
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    validate_bench_json(doc)
    assert doc["cpu_linear"] == "aten" and cpu_linear() == before  # the workers' setting, not this process's
    assert [r["model"] for r in doc["results"]] == ["encdec-tiny", "deconly-tiny"]
    assert doc["machine"] == {"peak_flops": 1e11, "mem_bandwidth_bytes_per_s": 2e10, "measured": False}
    assert not (tmp_path / "bench.png").exists()
    # re-render the report and the plot from the saved JSON, measuring nothing
    assert main(["bench", "--from-json", str(out), "--plot", str(tmp_path / "again.png")]) == 0
    assert "encdec-tiny vs deconly-tiny, 12->3, batch 1" in capsys.readouterr().out
    assert (tmp_path / "again.png").read_bytes()[:4] == b"\x89PNG"

    assert main(["bench", "--model", "encdec-tiny", "--output-len", "1", "--no-sweep", "--json", ""]) == 2
    assert "output_len" in capsys.readouterr().err
    assert main(["bench", "--model", "no-such-model", "--no-sweep", "--json", ""]) == 2
    assert "no-such-model" in capsys.readouterr().err
