"""Everything downstream takes an imported checkpoint: `encore generate / finetune / convert / export`
on tiny transformers T5Gemma, Qwen3, T5 and BART directories (with a tokenizer), and the ONNX export of
each gives the engine's greedy tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_convert import SHAPE, _close

from encore.cli import main
from encore.convert import load
from encore.tokenizer import encode_text, train_tokenizer

transformers = pytest.importorskip("transformers")

VOCAB = 512
TEXTS = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog. " * 5] * 20
PAIRS = [{"source": f"add {i} and 1", "target": f"{i + 1}"} for i in range(16)]


def _hf_model(family: str):
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # encore's trained tokenizer's specials
    shape = dict(SHAPE, vocab_size=VOCAB, **ids)
    torch.manual_seed(0)
    if family == "t5gemma":
        half = dict(shape, sliding_window=4, query_pre_attn_scalar=16)
        config = transformers.T5GemmaConfig(
            encoder=dict(half, num_hidden_layers=2), decoder=dict(half, num_hidden_layers=2), vocab_size=VOCAB, **ids
        )
        return transformers.T5GemmaForConditionalGeneration(config).eval()
    if family == "t5":  # Flan-T5's blocks: relative bias, gated GELU
        config = transformers.T5Config(
            vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
            dropout_rate=0.0, decoder_start_token_id=0, **ids,
        )  # fmt: skip
        return transformers.T5ForConditionalGeneration(config).eval()
    if family == "bart":  # post-norm LayerNorm blocks, learned positions, biases
        config = transformers.BartConfig(
            vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=128,
            dropout=0.0, decoder_start_token_id=2, forced_eos_token_id=None, **ids,
        )  # fmt: skip
        return transformers.BartForConditionalGeneration(config).eval()
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**shape, num_hidden_layers=2)).eval()


@pytest.fixture(scope="module", params=["t5gemma", "qwen3", "t5", "bart"])
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    _hf_model(request.param).save_pretrained(directory)
    train_tokenizer(TEXTS, vocab_size=VOCAB).save_pretrained(str(directory))
    return request.param, directory


def test_generate_from_a_transformers_directory(checkpoint, capsys):
    _, directory = checkpoint
    argv = ["generate", "--model", str(directory), "--input", "def add(a, b):", "--max-new-tokens", "4"]
    assert main(argv) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_generate_with_beams_equals_generate(checkpoint, capsys):
    """`encore generate --num-beams 3 --length-penalty 0.8`: the texts of `generate`'s beam search."""
    family, directory = checkpoint
    text = "def add(a, b):"
    argv = ["generate", "--model", str(directory), "--input", text, "--max-new-tokens", "6", "--num-beams", "3"]
    assert main([*argv, "--length-penalty", "0.8"]) == 0
    model = load(directory)
    ids = torch.tensor([model.config.source_ids(encode_text(model.tokenizer, text))])
    tokens = model.generate(ids, max_new_tokens=6, num_beams=3, length_penalty=0.8)[0].tolist()
    eos = set(model.config.eos_token_ids)
    tokens = tokens[: next((i for i, t in enumerate(tokens) if t in eos), len(tokens))]
    assert capsys.readouterr().out.strip() == model.tokenizer.decode(tokens, skip_special_tokens=True).strip()


@pytest.mark.slow
def test_finetune_then_convert_back_to_transformers(checkpoint, tmp_path):
    family, directory = checkpoint
    task = tmp_path / "pairs.jsonl"
    task.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    out = tmp_path / "ft"
    argv = [
        "finetune",
        "--model",
        str(directory),
        "--task",
        str(task),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
    ]
    assert main([*argv, "--out", str(out)]) == 0
    tuned = load(out / "final")
    assert tuned.config.family == family and tuned.tokenizer is not None
    assert main(["convert", "--model", str(out / "final"), "--out", str(tmp_path / "hf"), "--to", "hf"]) == 0
    seq2seq = family in ("t5gemma", "t5", "bart")
    auto = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
    hf = auto.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(3, VOCAB, (1, 7))
    with torch.no_grad():
        if seq2seq:
            _close(tuned(ids, ids[:, :3]), hf(input_ids=ids, decoder_input_ids=ids[:, :3]).logits)
        else:
            _close(tuned(ids), hf(input_ids=ids).logits)


def test_convert_refuses_a_preset_and_the_same_directory(checkpoint, capsys):
    _, directory = checkpoint
    assert main(["convert", "--model", "encdec-tiny", "--out", "x"]) == 2
    assert "has no weights to convert" in capsys.readouterr().err
    assert main(["convert", "--model", str(directory), "--out", str(directory)]) == 2
    assert "the same directory" in capsys.readouterr().err


def test_convert_keeps_an_image_tower_unless_told(tmp_path, capsys):
    """T5Gemma 2 converts with its SigLIP tower both ways (--to hf: T5Gemma 2's files again), and
    --text-only writes the text model alone."""
    from test_convert import _reference, _t5gemma2

    from encore.model.vlm import VisionLanguageModel

    hf = _reference(_t5gemma2)
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", "--model", str(tmp_path / "hf"), "--out", str(tmp_path / "encore")]) == 0
    vlm = load(tmp_path / "encore")
    assert isinstance(vlm, VisionLanguageModel)
    assert main(["convert", "--model", str(tmp_path / "encore"), "--out", str(tmp_path / "back"), "--to", "hf"]) == 0
    again = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "back").eval()
    theirs = again.state_dict()
    for name, tensor in hf.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
    text = tmp_path / "text"
    assert main(["convert", "--model", str(tmp_path / "hf"), "--out", str(text), "--text-only"]) == 0
    assert not isinstance(load(text), VisionLanguageModel) and not (text / "vision.safetensors").exists()
    capsys.readouterr()


def test_onnx_export_of_an_imported_model_gives_the_engines_tokens(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    from encore.onnx import OnnxGenerator

    _, directory = checkpoint
    assert main(["export", "--model", str(directory), "--out", str(tmp_path / "onnx")]) == 0
    model = load(directory)
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    reference = model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=None)
    generator = OnnxGenerator(tmp_path / "onnx")
    got = generator.generate(ids.numpy(), mask.numpy(), max_new_tokens=12, eos_token_id=None)
    np.testing.assert_array_equal(got, reference.numpy())
    # texts are laid out as the model's own collators lay them out (no EOS after an imported prompt)
    text = "def add(a, b):"
    assert generator.encode(text) == model.config.source_ids(encode_text(model.tokenizer, text))
