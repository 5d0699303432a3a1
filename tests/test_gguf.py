"""GGUF out (`encore.convert.gguf`) and the bench's llama.cpp anchor: the file transformers' GGUF reader
loads gives the encore model's logits; llama.cpp (when `encore[llamacpp]` is installed: it is not in
`make test`) generates the same greedy tokens from it and is timed by `encore bench --vs-llamacpp`."""

from __future__ import annotations

import json

import pytest
import torch

from encore.config import ModelConfig
from encore.convert import ConversionError, from_hf
from encore.infer.generate import generate
from encore.model.io import build

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

SHAPE = dict(
    vocab_size=160,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_hidden_layers=3,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    initializer_range=0.2,  # peaked logits: greedy choices are not decided by rounding
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)


def _llama(tied: bool = True):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE, tie_word_embeddings=tied)).eval()
    return from_hf(hf).eval()


def _hf_from_gguf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()


@pytest.mark.parametrize("tied", [True, False])
def test_f32_gguf_gives_the_same_logits_through_transformers(tmp_path, tied):
    from encore.convert.gguf import save_gguf

    model = _llama(tied)
    path = save_gguf(model, tmp_path / "m.gguf")
    names = {t.name for t in gguf.GGUFReader(str(path)).tensors}
    assert ("output.weight" in names) == (not tied)  # a tied head is the embedding, as llama.cpp expects
    ids = torch.randint(3, 160, (2, 24))
    with torch.no_grad():
        ours, theirs = model(ids), _hf_from_gguf(path)(ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_quantized_gguf_holds_the_quantized_weights(tmp_path, qtype):
    """gguf-py's quantizers: transformers reads back exactly the model whose matrices went through
    quantize -> dequantize (blocks of 32 along the input, so the q/k row permutation commutes)."""
    from encore.convert.gguf import save_gguf

    model = _llama()
    path = save_gguf(model, tmp_path / "m.gguf", qtype=qtype)
    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert kinds["blk.0.attn_q.weight"] == qtype and kinds["blk.0.attn_norm.weight"] == "F32"
    kind = gguf.GGMLQuantizationType[qtype]
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), kind), kind)))
    ids = torch.randint(3, 160, (1, 24))
    with torch.no_grad():
        ours, theirs = model(ids), _hf_from_gguf(path)(ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_what_llama_cpp_cannot_run_is_named(tmp_path):
    from encore.convert.gguf import save_gguf

    with pytest.raises(ConversionError, match="its MLP is gelu"):
        save_gguf(build(ModelConfig.preset("deconly-tiny")), tmp_path / "m.gguf")
    with pytest.raises(ConversionError, match="encoder-decoder"):
        save_gguf(build(ModelConfig.preset("encdec-tiny")), tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="qtype 'Q3_K'"):
        save_gguf(_llama(), tmp_path / "m.gguf", qtype="Q3_K")


# --- llama.cpp itself (skipped without encore[llamacpp]) ------------------------------------------


def test_llama_cpp_generates_the_same_tokens(tmp_path):
    pytest.importorskip("llama_cpp")
    from encore.bench.llamacpp import LlamaCpp
    from encore.convert.gguf import save_gguf

    model = _llama()
    path = save_gguf(model, tmp_path / "m.gguf")
    prompt = torch.randint(3, 160, (1, 40))
    ours = generate(model, prompt, max_new_tokens=24, eos_token_id=None)[0].tolist()
    runner = LlamaCpp(path, n_ctx=128, threads=1)
    assert len(set(ours)) > 3  # a model whose greedy output says something
    assert runner.generate(prompt[0].tolist(), 24) == ours
    assert runner.generate(prompt[0].tolist(), 24) == ours  # the cache is cleared between requests
    with pytest.raises(ValueError, match="exceed the context of 128"):
        runner.generate(prompt[0].tolist(), 100)


def test_bench_vs_llamacpp(tmp_path, monkeypatch, capsys):
    """--vs-llamacpp --quantize none int8 int4: llama.cpp F32 / Q8_0 / Q4_0 on the decoder-only model's
    own weights, compared with it (engine against engine) and with the encoder-decoder (the user's
    choice); the bytes per weight the cost model prices are the quantized file's."""
    pytest.importorskip("llama_cpp")
    from encore.bench import BenchConfig, run_bench
    from encore.bench.llamacpp import decode_bytes_per_weight, gguf_bytes_per_weight, gguf_file

    monkeypatch.setenv("ENCORE_CACHE", str(tmp_path))
    config = _llama().config.replace(max_seq_len=64)
    spec = tmp_path / "llama-tiny.json"
    spec.write_text(json.dumps(config.to_json_dict()))
    cfg = BenchConfig(
        model="encdec-tiny",
        baseline=str(spec),
        input_lens=(16,),
        output_len=4,
        repeats=1,
        warmup=0,
        sweep=(),
        batch_sizes=(1, 2),
        quantize=(None, "int8", "int4"),
        vs_llamacpp=True,
        peak_flops=1e11,
        mem_bandwidth=2e10,
        progress=False,
        isolate=False,
        json_path=None,
        plot_path=None,
    )
    doc = run_bench(cfg)
    anchors = {r["model"]: r for r in doc["results"] if r["backend"].startswith("llama.cpp")}
    assert set(anchors) == {f"llama.cpp {q} (llama-tiny)" for q in ("F32", "Q8_0", "Q4_0")}
    assert all(r["batch_size"] == 1 and r["anchor"] for r in anchors.values())  # batch 1 only
    pairs = {(c["model"], c["baseline"]) for c in doc["comparisons"] if c["batch_size"] == 1}
    assert ("llama-tiny int4", "llama.cpp Q4_0 (llama-tiny)") in pairs  # engine against engine
    assert ("encdec-tiny int4", "llama.cpp Q4_0 (llama-tiny)") in pairs  # the user's choice
    for quantize, qtype in (("int8", "Q8_0"), ("int4", "Q4_0")):
        path = gguf_file(config, 0, None, quantize)
        measured = gguf_bytes_per_weight(path)
        assert decode_bytes_per_weight(config, qtype) == pytest.approx(measured, rel=0.01)
        assert anchors[f"llama.cpp {qtype} (llama-tiny)"]["weight_bytes"] == pytest.approx(measured, rel=0.01)
    assert "encdec-tiny int4 vs llama.cpp Q4_0 (llama-tiny), 16->4, batch 1:" in capsys.readouterr().out


def test_a_cut_or_foreign_gguf_is_named_in_one_line(tmp_path):
    """A download cut short, or a file that is not GGUF: one line naming the file (not numpy's reshape
    error from inside the reader)."""
    from encore.convert import load
    from encore.convert.gguf import save_gguf

    data = save_gguf(_llama(), tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "head.gguf").write_bytes(data[:2000])
    (tmp_path / "text.gguf").write_text("hello world" * 100)
    for name in ("cut.gguf", "head.gguf", "text.gguf"):
        with pytest.raises(ValueError, match=rf"{name}: not a complete GGUF file \([\d,]+ bytes"):
            load(tmp_path / name)
