"""Whisper as ONNX graphs: `encore export` on a Whisper model, `OnnxWhisper` (onnxruntime) transcribing
through encore's own long-form loop: the graphs' logits equal the torch model's, the transcriptions
(greedy, beams, the temperature fallback, seeking over windows) equal the torch model's word for word,
int8 graphs transcribe, and the CLI runs both; tiny random models."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from test_whisper import NO_TIMESTAMPS, SOT, features, random_whisper

import encore

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from encore.audio.onnx import OnnxWhisper  # noqa: E402
from encore.cli import main  # noqa: E402
from encore.export import quantize_onnx  # noqa: E402
from encore.onnx import Manifest, OnnxGenerator  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(the tiny Whisper's directory, the torch model, its fp32 export by `encore export`, what the
    command printed)."""
    directory = random_whisper(tmp_path_factory.mktemp("whisper"))
    out = tmp_path_factory.mktemp("whisper-onnx")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "--model", str(directory), "--out", str(out)]) == 0
    return directory, encore.load(directory), out, printed.getvalue()


def test_the_graphs_give_the_torch_models_logits(exported):
    _, model, out, _ = exported
    manifest = Manifest.read(out)
    assert manifest.encoder_input == "audio" and set(manifest.graphs) == {"encoder", "decoder_prompt", "decoder_step"}
    assert manifest.graphs["decoder_step"]["inputs"]["cross_k.0"]["shape"][0] == 1  # one window's, shared
    whisper = OnnxWhisper(out)
    feats, prompt = features(1), torch.tensor([[SOT, NO_TIMESTAMPS, 5, 6]])
    with torch.no_grad():
        ref, ref_cache = model.prefill(feats, None, 4, decoder_prompt=prompt, logits_at=[0, 3])
        got, cache = whisper.prefill(feats, None, 4, decoder_prompt=prompt, logits_at=[0, 3])
        assert got.shape == ref.shape == (1, 2, model.config.vocab_size)
        assert (got - ref).abs().max() < 1e-4
        # a beam search's three hypotheses over the window's one cross K/V
        rows = torch.tensor([0, 0, 0])
        ref_cache, cache = ref_cache.select_rows(rows, cross=False), cache.select_rows(rows, cross=False)
        for tokens in (torch.tensor([7, 8, 9]), torch.tensor([3, 3, 4])):
            assert (whisper.decode_step(tokens, cache) - model.decode_step(tokens, ref_cache)).abs().max() < 1e-4
    with pytest.raises(ValueError, match="one window at a time"):
        whisper.prefill(features(2), None, 4, decoder_prompt=prompt.repeat(2, 1))


def test_transcriptions_equal_the_torch_models(exported):
    _, model, out, _ = exported
    whisper = OnnxWhisper(out)
    audio = np.random.RandomState(0).randn(16000 * 40).astype(np.float32) * 0.1  # 40 s: two windows at least
    for options in ({"beam_size": 1, "temperature": (0.0, 0.5)}, {"beam_size": 2, "temperature": (0.0, 0.5)}):
        ref, got = model.transcribe(audio, **options), whisper.transcribe(audio, **options)
        assert got["text"] == ref["text"] and got["text"].strip()
        assert [(s["start"], s["end"], s["tokens"]) for s in got["segments"]] == [
            (s["start"], s["end"], s["tokens"]) for s in ref["segments"]
        ]
        assert [s["avg_logprob"] for s in got["segments"]] == pytest.approx([s["avg_logprob"] for s in ref["segments"]])
    with pytest.raises(ValueError, match="word_timestamps"):
        whisper.transcribe(audio, word_timestamps=True)
    with pytest.raises(ValueError, match="batch_size"):
        whisper.transcribe(audio, batch_size=2)
    with pytest.raises(ValueError, match="speech model's export"):
        OnnxGenerator(out)


def test_quantized_graphs_transcribe(exported, tmp_path):
    _, model, out, _ = exported
    quantize_onnx(out, tmp_path / "int8", "int8")
    assert Manifest.read(tmp_path / "int8").encoder_input == "audio"
    whisper = OnnxWhisper(tmp_path / "int8")
    feats, prompt = features(1), torch.tensor([[SOT, NO_TIMESTAMPS]])
    with torch.no_grad():
        ref = model.prefill(feats, None, 2, decoder_prompt=prompt)[0]
        got = whisper.prefill(feats, None, 2, decoder_prompt=prompt)[0]
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()  # int8 weights: close, not equal
    audio = np.random.RandomState(1).randn(16000 * 5).astype(np.float32) * 0.1
    assert isinstance(whisper.transcribe(audio, beam_size=2, temperature=0.0)["text"], str)


def test_the_cli_exports_and_transcribes(exported, tmp_path, capsys):
    sf = pytest.importorskip("soundfile")
    pytest.importorskip("av")
    directory, _, exported_to, printed = exported
    assert "decoder_prompt.onnx" in printed and (exported_to / "config.json").is_file()
    audio = np.random.RandomState(2).randn(16000 * 5).astype(np.float32) * 0.1
    sf.write(tmp_path / "a.wav", audio, 16000)
    texts = {}
    for model in (directory, exported_to):
        args = ("--output-format", "json", "--beam-size", "2")
        code, out, err = run_cli(capsys, "transcribe", "--model", model, tmp_path / "a.wav", *args)
        assert code == 0, err
        texts[str(model)] = json.loads(out)["text"]
    assert texts[str(directory)] == texts[str(exported_to)]
    onnx = ("transcribe", "--model", exported_to, tmp_path / "a.wav")
    code, out, err = run_cli(capsys, *onnx, "--quantize", "int8")
    assert code == 2 and "is an ONNX export; quantize it with encore export" in err
    code, out, err = run_cli(capsys, *onnx, "--word-timestamps")
    assert code == 2 and "--word-timestamps runs on the torch model" in err
    code, out, err = run_cli(capsys, "eval", "--model", exported_to, "--task", "code2doc", "--out", tmp_path / "e")
    assert code == 2 and "an ONNX export (encore export); encore transcribe and encore generate" in err
    code, out, err = run_cli(capsys, "export", "--model", directory, "--out", tmp_path / "s", "--static")
    assert code == 2 and "a speech model exports with dynamic shapes" in err


def test_the_speech_bench_times_the_export_beside_the_engine(exported, tmp_path, monkeypatch, capsys):
    """`encore bench --model <whisper> --backend onnx`: encore's rows, then the export's on onnxruntime
    (the export itself is the fixture's: `cached_onnx_export` is what makes it, tested with text models)."""
    import encore.bench.backends as backends

    directory, _, exported_to, _ = exported
    made = []
    monkeypatch.setattr(backends, "cached_onnx_export", lambda *a: made.append(a[2]) or exported_to)
    out = tmp_path / "speech.json"
    argv = ("bench", "--model", directory, "--backend", "onnx", "--repeats", "1", "--output-len", "4", "--json", out)
    code, printed, err = run_cli(capsys, *argv)
    assert code == 0, err
    rows = json.loads(out.read_text())["rows"]
    assert [(r["engine"], r["quantize"]) for r in rows] == [("encore", "none"), ("encore (onnxruntime)", "none")]
    assert made == [None] and all(r["first_token_s"] > 0 and r["decode_tok_s"] > 0 for r in rows)
    assert "encore (onnxruntime)" in printed
