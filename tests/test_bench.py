"""`encore bench` end to end on the tiny presets: JSON against its schema, the plot, the CLI, --vs-hf."""

import json

import pytest
import torch

from encore import ModelConfig
from encore.bench import (
    BACKENDS,
    PAPER,
    RESULT_FIELDS,
    BenchConfig,
    hf_llama_config,
    hf_t5_config,
    plan_points,
    run_bench,
    validate_bench_json,
)
from encore.bench.backends import EncoreBackend, Timing
from encore.cli import main
from encore.model.fused import fused_available
from encore.model.kernels import int8_available, onednn_available

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


def test_plan_points():
    """Full points for every batch size x input length; sweep points at the first batch size only, for
    lengths not measured in full, without warm-up (the model is warm by then)."""
    cfg = BenchConfig(input_lens=(512, 64), batch_sizes=(2, 8), sweep=(64, 128, 128), repeats=4, warmup=2)
    points = [(p.input_len, p.batch_size, p.output_len, p.repeats, p.warmup, p.kind) for p in plan_points(cfg)]
    assert points == [
        (512, 2, 128, 4, 2, "full"),
        (64, 2, 128, 4, 2, "full"),
        (512, 8, 128, 4, 2, "full"),
        (64, 8, 128, 4, 2, "full"),
        (128, 2, 16, 3, 0, "sweep"),
    ]
    # the defaults are the paper's comparison, with the device's sweep
    default = plan_points(BenchConfig())
    assert [(p.input_len, p.output_len) for p in default if p.kind == "full"] == [(512, 128)]
    assert max(p.input_len for p in default) == 2048
    assert max(p.input_len for p in plan_points(BenchConfig(device="cuda"))) == 8192
    assert BenchConfig().resolved_dtype() == "float32" and BenchConfig(device="cuda").resolved_dtype() == "bfloat16"


class ScriptedBackend(EncoreBackend):
    """The encore backend with a scripted clock: repetition r of a point answers with a first token
    after 0.1 * (r + 1) s and one token every 10 ms (the decoder-only model takes twice as long)."""

    calls: dict[str, int] = {}

    def timed_generate(self, model, ids, n, capacity):
        r = self.calls.get(self.label, 0)
        self.calls[self.label] = r + 1
        slow = 2.0 if self.arch == "deconly" else 1.0
        first = 0.1 * (r + 1) * slow
        gaps = [0.01 * slow] * (n - 1)
        return Timing(0.0, first, first + sum(gaps), n, gaps)


def test_aggregation_from_a_scripted_backend(monkeypatch):
    """Medians, spreads, rates and ratios computed from known clock readings."""
    monkeypatch.setitem(BACKENDS, "encore", ScriptedBackend)
    ScriptedBackend.calls = {}
    cfg = BenchConfig(**{**TINY, "repeats": 3, "warmup": 0, "output_len": 5}, json_path=None, plot_path=None)
    doc = run_bench(cfg)
    by_model = {r["model"]: r for r in doc["results"]}
    enc, dec = by_model["encdec-tiny"], by_model["deconly-tiny"]
    # repetitions answered 0.1, 0.2, 0.3 s: median 0.2, spread [0.1, 0.3]
    assert enc["first_token_latency_s"] == pytest.approx(0.2)
    assert enc["spread"]["first_token_latency_s"] == pytest.approx([0.1, 0.3])
    assert enc["decode_tokens_per_s"] == pytest.approx(4 / 0.04)  # (n - 1) tokens over the last n - 1 gaps
    assert enc["throughput_tokens_per_s"] == pytest.approx(5 / (0.2 + 0.04))
    assert enc["inter_token_latency_s"] == pytest.approx(0.01) and dec["inter_token_latency_s"] == pytest.approx(0.02)
    (full,) = doc["comparisons"]
    assert (full["model"], full["baseline"]) == ("encdec-tiny", "deconly-tiny")
    assert full["measured"]["first_token_latency_ratio"] == pytest.approx(0.5)
    assert full["measured"]["decode_speedup"] == pytest.approx(2.0)
    assert full["measured"]["inter_token_speedup"] == pytest.approx(2.0)


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
    assert doc["cpu_linear"] == ("onednn" if onednn_available() else "aten")  # encore's fastest fp32 CPU kernel
    assert set(doc["machines"]) == {doc["cpu_linear"]}

    results = doc["results"]
    assert {(r["model"], r["input_len"], r["output_len"]) for r in results} == {
        (m, s, n) for m in ("encdec-tiny", "deconly-tiny") for s, n in ((16, 4), (8, 3), (32, 3))
    }
    for r in results:
        assert r["backend"] == "encore" and r["dtype"] == "float32" and r["batch_size"] == 1 and not r["anchor"]
        assert r["arch"] == ("encdec" if r["model"].startswith("encdec") else "deconly")
        # a whole request = prefill + its decode steps; the cost model prices both
        assert r["flops"] == pytest.approx(r["prefill_flops"] + r["decode_flops"])
        assert r["bytes_moved"] == pytest.approx(r["prefill_bytes"] + r["decode_bytes"])
        full = r["input_len"] == 16
        assert (r["repeats"], r["kind"]) == ((2, "full") if full else (1, "sweep"))
    head = {r["arch"]: r for r in results if r["input_len"] == 16}
    # KV cache: encdec = 2 decoder layers over (4 outputs + 16 inputs); deconly = 6 layers over 20 positions
    kv_bytes = 2 if fused_available() else 4  # fp16 K/V where the fused CPU kernels run (optimize's default)
    per_position = 2 * 2 * 64 * kv_bytes  # K+V * kv heads * head_dim * bytes
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
    kv_bytes = 2 if fused_available() else 4  # encore's K/V: fp16 where the fused CPU kernels run; T5's fp32
    assert t5["kv_cache_bytes"] == 2 * (4 // kv_bytes) * by_model["encdec-tiny"]["kv_cache_bytes"]  # 4 KV heads vs 2
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
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    validate_bench_json(doc)
    assert doc["cpu_linear"] == "aten"  # the models' kernel, as the flag asked
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


@pytest.mark.skipif(not int8_available(), reason="needs torch's x86 / fbgemm quantized engine")
def test_int8_batches_and_the_ctranslate2_anchor(tmp_path, monkeypatch, capsys):
    """--quantize none int8 --batch-size 1 3 --vs-ct2: every model at each precision, concurrent requests
    through the engine, and CTranslate2 fp32 / int8 of the T5 shape compared with the matching encore model."""
    pytest.importorskip("ctranslate2")
    monkeypatch.setenv("ENCORE_CACHE", str(tmp_path))  # the converted anchor is cached there
    cfg = BenchConfig(**{**TINY, "repeats": 1, "warmup": 0}, quantize=(None, "int8"), batch_sizes=(1, 3), vs_ct2=True)
    doc = run_bench(BenchConfig(**{**cfg.__dict__, "json_path": None, "plot_path": None}))
    by = {(r["model"], r["batch_size"]): r for r in doc["results"]}
    anchors = {"ct2-t5 float32 (encdec-tiny)", "ct2-t5 int8 (encdec-tiny)"}
    own = {"encdec-tiny", "deconly-tiny", "encdec-tiny int8", "deconly-tiny int8"}
    assert {m for m, _ in by} == own | anchors
    assert set(doc["machines"]) == {doc["cpu_linear"], "int8"}
    for (model, batch), r in by.items():
        int8 = "int8" in model
        assert (r["weight_bytes"], r["kernel"] == "int8") == ((1, True) if int8 else (4, False)), model
        assert r["anchor"] == (model in anchors)
        assert r["backend"] == ("ctranslate2" if model in anchors else "encore") + ("-int8" if int8 else "")
        assert r["kv_cache_bytes"] == batch * by[(model, 1)]["kv_cache_bytes"]  # three requests, three slots
    # int8 weights: the cost model moves a quarter of the weight bytes per decode step
    assert by[("encdec-tiny int8", 1)]["decode_bytes"] < 0.5 * by[("encdec-tiny", 1)]["decode_bytes"]
    pairs = {(c["model"], c["baseline"], c["batch_size"]) for c in doc["comparisons"]}
    for b in (1, 3):
        assert ("encdec-tiny", "deconly-tiny", b) in pairs and ("encdec-tiny int8", "deconly-tiny int8", b) in pairs
        assert ("encdec-tiny", "ct2-t5 float32 (encdec-tiny)", b) in pairs
        assert ("encdec-tiny int8", "ct2-t5 int8 (encdec-tiny)", b) in pairs
    assert len(pairs) == 8
    assert "encdec-tiny int8 vs ct2-t5 int8 (encdec-tiny), 16->4, batch 3:" in capsys.readouterr().out


def test_an_anchor_that_crashes_ends_its_own_row(monkeypatch, capsys):
    """llama-cpp-python once segfaulted mid-run and the bench died with it, printing none of encore's
    figures: now the anchor's row is left out, named, and the rest is reported."""
    from encore.bench.anchors import HFBackend
    from encore.bench.report import format_report

    class Crashing(HFBackend):
        def timed_generate(self, model, ids, n, capacity):
            raise RuntimeError("bench worker died (exit code -11)")

    monkeypatch.setitem(BACKENDS, "hf", Crashing)
    cfg = BenchConfig(**{**TINY, "baseline": None, "vs_hf": True}, json_path=None, plot_path=None)
    doc = run_bench(cfg)
    assert [r["model"] for r in doc["results"]] == ["encdec-tiny"]
    ((label, why),) = doc["failed"].items()
    assert label.startswith("hf-t5") and "exit code -11" in why
    assert f"{label}: failed, no row" in format_report(doc)
    assert "its row is left out" in capsys.readouterr().err


def test_models_that_do_not_fit_side_by_side_are_measured_one_at_a_time(monkeypatch, capsys):
    """A pair whose weights exceed the available memory (a 10B pair at int8 on 24 GB died OOM-killed
    building both) is built and measured one model at a time, said on stderr and in the JSON; both rows
    and their comparison are there."""
    import encore.bench.runner as runner

    doc = run_bench(BenchConfig(**TINY, json_path=None, plot_path=None))
    assert doc["models_measured"] == "interleaved"
    monkeypatch.setattr(runner, "_available_memory", lambda: 1 << 30)  # each tiny model fits, not both
    doc = run_bench(BenchConfig(**TINY, json_path=None, plot_path=None))
    assert doc["models_measured"] == "one at a time"
    assert sorted(r["model"] for r in doc["results"]) == ["deconly-tiny", "encdec-tiny"]
    assert doc["comparisons"] and all(r["kv_cache_bytes"] > 0 for r in doc["results"])
    assert "each model is measured alone" in capsys.readouterr().err


def test_num_beams_times_beam_search_in_every_backend(tmp_path, monkeypatch, capsys):
    """--num-beams K: encore's engine (K slots a request), transformers' and CTranslate2's beam search of
    the same shapes, exactly --output-len steps each; the anchors cannot time a first token (null)."""
    pytest.importorskip("ctranslate2")
    monkeypatch.setenv("ENCORE_CACHE", str(tmp_path))
    cfg = BenchConfig(**{**TINY, "baseline": None, "repeats": 1, "warmup": 0}, num_beams=3, batch_sizes=(2,))
    doc = run_bench(
        BenchConfig(**{**cfg.__dict__, "vs_ct2": True, "vs_hf": True, "json_path": None, "plot_path": None})
    )
    by = {r["backend"]: r for r in doc["results"]}
    assert set(by) == {"encore-beam3", "transformers-beam3", "ctranslate2-beam3"}
    assert by["encore-beam3"]["first_token_latency_s"] > 0 and by["encore-beam3"]["decode_tokens_per_s"] > 0
    for name in ("transformers-beam3", "ctranslate2-beam3"):
        assert by[name]["first_token_latency_s"] is None and by[name]["throughput_tokens_per_s"] > 0
    validate_bench_json(doc)
    assert "encdec-tiny vs ct2-t5 float32 (encdec-tiny), 16->4, batch 2:" in capsys.readouterr().out
    with pytest.raises(ValueError, match="num_beams: must be an integer >= 1"):
        BenchConfig(num_beams=0).validate()


def test_profile_prefill_splits_the_prefill_and_counts_its_operations():
    """The parts add up to the wall time; the products' operations are what torch's own FLOP counter
    counts for the projections (encdec and decoder-only, fp32 with aten's products)."""
    from torch.utils.flop_counter import FlopCounterMode

    from encore.bench.prefill_profile import PARTS, profile_prefill
    from encore.model.io import build

    for preset in ("encdec-tiny", "deconly-tiny"):
        # untied: an un-optimized tied head is F.linear over the embedding, no module (overhead, there)
        model = build(ModelConfig.preset(preset, tie_embeddings=False), seed=0).eval()
        ids = torch.randint(3, 8000, (2, 24))
        profile = profile_prefill(model, ids, peak_ops=1e11, repeats=1)
        parts = profile["parts"]
        assert set(parts) == set(PARTS)
        assert sum(p["seconds"] for p in parts.values()) == pytest.approx(profile["wall_s"], rel=1e-6)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model.prefill(ids, None, 1)
        counted = counter.get_flop_counts()["Global"]
        products = sum(n for op, n in counted.items() if "mm" in str(op) or "linear" in str(op))
        assert parts["products"]["ops"] == products
        assert parts["attention"]["ops"] > 0 and 0 < parts["products"]["peak_share"]


def test_cli_profile_prefill_writes_it_to_the_json_and_the_report(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["bench", "--model", "encdec-tiny", "--baseline", "none", "--input-len", "16", "--output-len", "2"]
    argv += ["--repeats", "1", "--warmup", "0", "--no-sweep", "--json", str(out), "--plot", "", "--quiet"]
    argv += ["--peak-gflops", "100", "--bandwidth-gbs", "20", "--in-process", "--profile-prefill"]
    assert main(argv) == 0
    (result,) = json.loads(out.read_text())["results"]
    profile = result["prefill_profile"]
    assert profile["input_len"] == 16 and profile["peak_ops"] == 1e11
    assert "prefill profile, encdec-tiny: 1 x 16 tokens" in capsys.readouterr().out


def test_kv_cache_dtype_reaches_the_models():
    """`--kv-cache-dtype fp16`: every encore model of the run keeps fp16 K/V (its rows say so)."""
    cfg = BenchConfig(**{**TINY, "repeats": 1, "warmup": 0}, quantize=("int8",), kv_cache_dtype="fp16",
                      json_path=None, plot_path=None)  # fmt: skip
    doc = run_bench(cfg)
    assert doc["results"] and all(r["model"].endswith("fp16 K/V") for r in doc["results"])
    with pytest.raises(ValueError, match="kv_cache_dtype: must be 'auto', 'fp32' or 'fp16'"):
        BenchConfig(kv_cache_dtype="int8").validate()
