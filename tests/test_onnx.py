"""ONNX export and the torch-free runtime: the graphs give the torch engine's greedy tokens exactly,
int8 stays close, the QDQ graph runs with its operator set, and the runtime imports no torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_model
from test_model import padded_batch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
import onnx  # noqa: E402

from encore.cli import main  # noqa: E402
from encore.export import export_onnx, quantize_onnx  # noqa: E402
from encore.onnx import OnnxGenerator  # noqa: E402
from encore.tokenizer import train_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog. " * 5] * 20


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each architecture's tiny model (with a tokenizer) exported in fp32, dynamic shapes."""
    tokenizer = train_tokenizer(TEXTS, vocab_size=512)
    out = {}
    for arch in ("encdec", "deconly"):
        model = make_model(arch, max_seq_len=128)
        with torch.no_grad():  # weights of a trained model's scale (what quantization meets)
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.05)
        model.tokenizer = tokenizer
        directory = tmp_path_factory.mktemp(f"onnx-{arch}")
        export_onnx(model, directory)
        out[arch] = (model, directory)
    return out


@pytest.mark.parametrize("side", ["left", "right"])
def test_fp32_graphs_give_the_engines_greedy_tokens(exported, arch, side):
    model, directory = exported[arch]
    gen = OnnxGenerator(directory)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 512, (n,), generator=g) for n in (9, 4, 13)]
    ids, mask = padded_batch(rows, side)
    reference = model.generate(ids, attention_mask=mask, max_new_tokens=40, eos_token_id=None)
    got = gen.generate(ids.numpy(), mask.numpy(), max_new_tokens=40, eos_token_id=None)
    assert got.dtype == np.int64 and got.shape == (3, 40)
    np.testing.assert_array_equal(got, reference.numpy())
    assert len(set(got.flatten().tolist())) > 5
    # EOS stops a row and pads it, as torch's generate does
    eos = int(reference[0, 3])
    torch_eos = model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos)
    np.testing.assert_array_equal(
        gen.generate(ids.numpy(), mask.numpy(), max_new_tokens=12, eos_token_id=eos), torch_eos
    )


def test_beam_search_gives_torchs_beams(exported, arch):
    """The runtime's beam search (numpy, no torch) gives `generate_beams`' tokens and scores."""
    from encore.infer.generate import Beams, generate_beams

    model, directory = exported[arch]
    gen = OnnxGenerator(directory)
    g = torch.Generator().manual_seed(2)
    ids, mask = padded_batch([torch.randint(3, 512, (n,), generator=g) for n in (9, 5)], "right")
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=4, eos_token_id=None)
    ended = False
    for eos in greedy[:, 1].tolist():  # a likely token as EOS: some beams end early
        for beams in (Beams(num_beams=4), Beams(num_beams=3, num_return_sequences=2, length_penalty=2.0)):
            tokens, scores = generate_beams(model, ids, mask, 10, beams, eos)
            got, got_scores = gen.generate_beams(ids.numpy(), mask.numpy(), 10, beams, eos_token_id=eos)
            np.testing.assert_array_equal(got, tokens.numpy())
            np.testing.assert_allclose(got_scores, scores.numpy(), atol=1e-4)
            ended |= bool((got == eos).any())
    assert ended  # EOS and the padding after it were exercised
    plain = gen.generate(ids.numpy(), mask.numpy(), max_new_tokens=10, num_beams=4, eos_token_id=eos)
    np.testing.assert_array_equal(plain, generate_beams(model, ids, mask, 10, Beams(num_beams=4), eos)[0].numpy())


def test_manifest_names_the_graphs_and_their_axes(exported):
    _, directory = exported["encdec"]
    manifest = json.loads((directory / "encore_onnx.json").read_text())
    assert manifest["format"] == "encore-onnx-v1" and manifest["arch"] == "encdec" and manifest["quantization"] is None
    assert set(manifest["graphs"]) == {"encoder", "decoder_step"} and manifest["tokenizer"] == "tokenizer.json"
    step = manifest["graphs"]["decoder_step"]
    names = ["tokens", "positions", "past_k.0", "past_k.1", "past_v.0", "past_v.1", "cross_k.0", "cross_k.1"]
    assert list(step["inputs"])[:8] == names and list(step["inputs"])[-1] == "cross_mask"
    assert step["inputs"]["past_k.0"]["shape"] == ["batch", 2, "self_len", 64]  # B, K, T, Dh of layer 0
    assert step["inputs"]["cross_mask"]["shape"] == ["batch", "input_len"]
    assert step["outputs"] == ["logits", "new_k", "new_v"]
    graph = onnx.load(directory / step["file"])
    assert [i.name for i in graph.graph.input] == list(step["inputs"]) and manifest["opset"] == 23
    assert "Attention" in {n.op_type for n in graph.graph.node}  # one fused op per attention


@pytest.mark.parametrize("quantize,bound", [("int8", 0.05), ("int4", 0.15)])
def test_quantized_first_step_logits_stay_close(exported, tmp_path, capsys, quantize, bound):
    """int8: MatMulInteger everywhere; int4: MatMulNBits in the decoder step (4-bit weights), the head
    MatMulInteger (int8, as encore.optimize's policy), the encoder int8. Quantized from the fp32
    export (`encore export --model EXPORT --quantize ...`: no second torch export)."""
    model, source = exported["encdec"]
    out = tmp_path / quantize
    assert main(["export", "--model", str(source), "--quantize", quantize, "--out", str(out)]) == 0
    assert f"quantized {source} ({quantize})" in capsys.readouterr().out
    manifest = json.loads((out / "encore_onnx.json").read_text())
    assert manifest["quantization"] == quantize and (out / "tokenizer.json").is_file()
    graphs = manifest["graphs"]
    ops = {name: {n.op_type for n in onnx.load(out / g["file"]).graph.node} for name, g in graphs.items()}
    assert "MatMulInteger" in ops["decoder_step"] and "MatMulInteger" in ops["encoder"]
    assert ("MatMulNBits" in ops["decoder_step"]) == (quantize == "int4") and "MatMulNBits" not in ops["encoder"]
    ids = torch.randint(3, 512, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference, _ = model.prefill(ids, None, 4)
    logits, _ = OnnxGenerator(out)._prefill(ids.numpy(), np.ones_like(ids.numpy()), 4)
    error = np.linalg.norm(logits - reference.numpy()) / np.linalg.norm(reference.numpy())
    assert error < bound, f"{quantize} first-step logits are {error:.3f} off fp32"
    assert OnnxGenerator(out).generate_text("def add(a, b):", max_new_tokens=3)  # the tokenizer came along
    # what an existing export cannot become, in one line each
    with pytest.raises(ValueError, match="already quantized"):
        quantize_onnx(out, tmp_path / "again", "int4")
    with pytest.raises(ValueError, match="qdq-int8 calibrates on the model"):
        quantize_onnx(source, tmp_path / "qdq", "qdq-int8")
    with pytest.raises(ValueError, match="a directory of its own"):
        quantize_onnx(source, source, quantize)
    assert main(["export", "--model", str(source), "--quantize", quantize, "--static", "--out", str(out)]) == 2
    assert "--static: an existing export keeps its shapes" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_static_qdq_export_runs_on_the_cpu_provider(tmp_path, capsys, arch):
    """The NPU form: fixed shapes, QuantizeLinear / DequantizeLinear around the weights' products,
    activation ranges calibrated on a file of inputs; it runs on the CPU execution provider."""
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(["def f(x): return x", "import os", "class A: pass", "print(1 + 2)"]))
    out = tmp_path / "npu"
    argv = ["export", "--model", f"{arch}-tiny", "--out", str(out), "--quantize", "qdq-int8", "--static"]
    argv += ["--max-input-len", "16", "--max-new-tokens", "6", "--calibration", str(calibration)]
    assert main(argv) == 0
    manifest = json.loads((out / "encore_onnx.json").read_text())
    assert manifest["quantization"] == "qdq-int8" and manifest["static"] == {
        "batch_size": 1,
        "max_input_len": 16,
        "max_new_tokens": 6,
    }
    for graph in manifest["graphs"].values():
        ops = {n.op_type for n in onnx.load(out / graph["file"]).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "MatMulInteger" not in ops
        assert "Attention" not in ops and manifest["opset"] == 20  # NPU compilers take MatMul / Softmax
        assert all(isinstance(d, int) for spec in graph["inputs"].values() for d in spec["shape"])
    capsys.readouterr()
    assert (
        main(["generate", "--backend", "onnx", "--model", str(out), "--input", "def g(y):", "--max-new-tokens", "6"])
        == 0
    )
    assert capsys.readouterr().err == ""
    gen = OnnxGenerator(out)
    assert gen.generate(np.array([[5, 6, 7]]), max_new_tokens=6).shape == (1, 6)
    with pytest.raises(ValueError, match="static.*input 16"):
        gen.generate(np.full((1, 17), 5), max_new_tokens=2)


def test_runtime_runs_without_torch(exported):
    """A deployment may leave torch out: the runtime imports numpy, onnxruntime and tokenizers only."""
    model, directory = exported["encdec"]
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # importing torch now fails\n"
        "from encore.onnx import OnnxGenerator\n"
        f"gen = OnnxGenerator({str(directory)!r})\n"
        "print(repr(gen.generate_text('def add(a, b):', max_new_tokens=5)))\n"
        "print(gen.generate([[5, 6, 7]], max_new_tokens=5).tolist())\n"
        "print(gen.generate([[5, 6, 7]], max_new_tokens=5, num_beams=3).tolist())\n"
        "print('torch' in sys.modules and sys.modules['torch'] is not None)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text, tokens, beams, torch_loaded = proc.stdout.strip().splitlines()
    assert torch_loaded == "False" and isinstance(eval(text), str)
    assert eval(tokens) == model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=5).tolist()
    assert eval(beams) == model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=5, num_beams=3).tolist()


def test_clear_errors(exported, tmp_path):
    _, directory = exported["deconly"]
    with pytest.raises(ValueError, match=r"provider 'nope'.*available:.*cpu \(CPUExecutionProvider\)"):
        OnnxGenerator(directory, provider="nope")
    with pytest.raises(FileNotFoundError, match="encore_onnx.json: missing"):
        OnnxGenerator(tmp_path)
    (tmp_path / "encore_onnx.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="field 'format'"):
        OnnxGenerator(tmp_path)
    gen = OnnxGenerator(directory)
    with pytest.raises(ValueError, match=r"input_ids\[0, 1\] = 600 is outside the vocabulary"):
        gen.generate([[3, 600]])
    with pytest.raises(ValueError, match="masks out every token"):
        gen.generate([[3, 4]], attention_mask=[[0, 0]])
    with pytest.raises(ValueError, match="temperature"):
        gen.generate([[3, 4]], do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="plain model"):
        import encore

        export_onnx(encore.optimize(make_model("encdec")), tmp_path / "x")


@pytest.mark.slow
def test_bench_times_the_exported_graphs(tmp_path, monkeypatch, capsys):
    """encore bench --backend onnx: the exported graphs beside the engine, compared with it."""
    monkeypatch.setenv("ENCORE_CACHE", str(tmp_path))  # the exports are cached there
    argv = ["bench", "--model", "encdec-tiny", "--baseline", "none", "--input-len", "12", "--output-len", "4"]
    argv += ["--repeats", "1", "--warmup", "0", "--no-sweep", "--json", str(tmp_path / "b.json"), "--plot", ""]
    argv += [
        "--quiet",
        "--peak-gflops",
        "100",
        "--bandwidth-gbs",
        "20",
        "--backend",
        "onnx",
        "--quantize",
        "none",
        "int8",
    ]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "b.json").read_text())
    by = {r["model"]: r for r in doc["results"]}
    assert set(by) == {"encdec-tiny", "encdec-tiny int8", "onnx fp32 (encdec-tiny)", "onnx int8 (encdec-tiny)"}
    assert by["onnx int8 (encdec-tiny)"]["backend"] == "onnxruntime-int8" and by["onnx fp32 (encdec-tiny)"]["anchor"]
    pairs = {(c["model"], c["baseline"]) for c in doc["comparisons"]}
    assert pairs == {("encdec-tiny", "onnx fp32 (encdec-tiny)"), ("encdec-tiny int8", "onnx int8 (encdec-tiny)")}
    assert len(list((tmp_path / "bench").glob("onnx-*"))) == 2  # one cached export per quantization
