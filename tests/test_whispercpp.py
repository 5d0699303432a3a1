"""whisper.cpp's ggml model file out (`encore.convert.ggml`) and the speech bench's whisper.cpp anchor: the
file, read back here, holds the header, mel filters, vocabulary, names, types, shapes and values whisper.cpp's
loader expects; whisper.cpp itself (pywhispercpp's library, when `encore[whispercpp]` is installed: not in
`make test`) loads it and gives encore's logits and greedy tokens; `encore bench --vs-whispercpp` times it."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch
from test_whisper import NO_TIMESTAMPS, SOT, SPECIALS, WORDS, random_whisper

import encore
from encore.audio.features import N_FRAMES, mel_filters
from encore.convert.ggml import save_ggml

transformers = pytest.importorskip("transformers")

D, LAYERS = 64, 2


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """A tiny random Whisper of the shapes whisper.cpp builds (MLPs 4x wide, d_model a multiple of 32),
    weights spread wide enough that greedy decoding varies, no timestamp tokens (whisper.cpp names the
    ids above its vocabulary itself)."""
    shape = dict(d_model=D, encoder_layers=LAYERS, decoder_layers=LAYERS, encoder_ffn_dim=4 * D, decoder_ffn_dim=4 * D)
    return random_whisper(tmp_path_factory.mktemp("whisper"), stamps=[], init_std=0.15, **shape)


@pytest.fixture(scope="module")
def model(whisper_dir):
    return encore.load(whisper_dir).eval()


def read_ggml(path) -> dict:
    """whisper.cpp's ggml file: {"magic", "hparams", "filters", "vocab", "tensors": name -> (type, array)};
    quantized tensors dequantized by gguf-py."""
    data, offset = path.read_bytes(), 0

    def ints(n: int) -> tuple[int, ...]:
        nonlocal offset
        offset += 4 * n
        return struct.unpack_from(f"<{n}i", data, offset - 4 * n)

    def take(n: int) -> bytes:
        nonlocal offset
        offset += n
        return data[offset - n : offset]

    (magic,), hparams = struct.unpack_from("<I", data), ints(12)[1:]
    n_mel, n_fft = ints(2)
    filters = np.frombuffer(take(4 * n_mel * n_fft), "<f4").reshape(n_mel, n_fft)
    vocab = [take(ints(1)[0]) for _ in range(ints(1)[0])]
    tensors = {}
    while offset < len(data):
        n_dims, length, ttype = ints(3)
        shape = tuple(reversed(ints(n_dims)))
        name, count = take(length).decode(), math.prod(shape)
        if ttype in (0, 1):
            array = np.frombuffer(take(count * (4 if ttype == 0 else 2)), "<f4" if ttype == 0 else "<f2")
        else:
            gguf = pytest.importorskip("gguf")
            kind = gguf.GGMLQuantizationType(ttype)
            block, size = gguf.GGML_QUANT_SIZES[kind]
            raw = np.frombuffer(take(count // block * size), np.uint8).reshape(shape[0], -1)
            array = gguf.quants.dequantize(raw, kind)
        tensors[name] = (ttype, array.astype(np.float32).reshape(shape))
    return {"magic": magic, "hparams": hparams, "filters": filters, "vocab": vocab, "tensors": tensors}


def whisper_cpp_names(n_audio: int, n_text: int) -> set[str]:
    """The tensors whisper.cpp's loader creates (src/whisper-arch.h), every one of which a file must hold."""
    attn = ["attn_ln.weight", "attn_ln.bias", "attn.query.weight", "attn.query.bias", "attn.key.weight",
            "attn.value.weight", "attn.value.bias", "attn.out.weight", "attn.out.bias"]  # fmt: skip
    mlp = ["mlp_ln.weight", "mlp_ln.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    names = {"encoder.positional_embedding", "encoder.conv1.weight", "encoder.conv1.bias", "encoder.conv2.weight",
             "encoder.conv2.bias", "encoder.ln_post.weight", "encoder.ln_post.bias", "decoder.positional_embedding",
             "decoder.token_embedding.weight", "decoder.ln.weight", "decoder.ln.bias"}  # fmt: skip
    names |= {f"encoder.blocks.{i}.{t}" for i in range(n_audio) for t in attn + mlp}
    names |= {f"decoder.blocks.{i}.{t}" for i in range(n_text) for t in attn + mlp + ["cross_" + a for a in attn]}
    return names


def hf_weights(whisper_dir) -> dict[str, np.ndarray]:
    """transformers' weights under openai's names (convert-h5-to-ggml.py's table), the encoder's sinusoids
    included: what the file must hold."""
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    pairs = [("self_attn_layer_norm", "attn_ln"), ("encoder_attn_layer_norm", "cross_attn_ln"),
             ("final_layer_norm", "mlp_ln"), ("self_attn.", "attn."), ("encoder_attn.", "cross_attn."),
             ("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("out_proj", "out"), ("fc1", "mlp.0"),
             ("fc2", "mlp.2"), ("layers.", "blocks."), ("embed_tokens", "token_embedding"),
             ("encoder.layer_norm", "encoder.ln_post"), ("decoder.layer_norm", "decoder.ln"),
             ("embed_positions.weight", "positional_embedding")]  # fmt: skip
    out = {}
    for name, tensor in hf.state_dict().items():
        if name == "proj_out.weight":
            continue  # tied to the token embedding
        name = name.removeprefix("model.")
        for old, new in pairs:
            name = name.replace(old, new)
        out[name] = tensor.float().numpy()
    return out


def test_the_file_holds_whisper_cpps_header_vocabulary_names_and_weights(whisper_dir, model, tmp_path):
    got = read_ggml(save_ggml(model, tmp_path / "m.bin"))  # F16
    assert got["magic"] == 0x67676D6C
    assert got["hparams"] == (len(WORDS) + len(SPECIALS), 1500, D, 4, LAYERS, 448, D, 4, LAYERS, 80, 1)
    assert got["filters"].shape == (80, 201) and np.allclose(got["filters"], mel_filters(80).numpy())
    assert got["vocab"] == [w.encode() for w in WORDS]  # the pieces below <|endoftext|>; whisper.cpp adds the rest
    tensors, expected = got["tensors"], hf_weights(whisper_dir)
    assert set(tensors) == whisper_cpp_names(LAYERS, LAYERS)
    assert "encoder.blocks.0.attn.key.bias" not in tensors  # whisper.cpp has none (encore's are zeros)
    for name, (ttype, array) in tensors.items():
        conv, table = name.startswith("encoder.conv"), name.endswith("positional_embedding")
        want = 1 if (array.ndim == 3 or (array.ndim == 2 and not conv and not table)) else 0
        assert ttype == want, name  # matrices and convolutions F16; biases, norms, tables F32
        ref = (
            expected[name].reshape(-1, 1)
            if name.endswith("conv1.bias") or name.endswith("conv2.bias")
            else expected[name]
        )
        assert array.shape == ref.shape, name
        # F16 rounding; the encoder's sinusoids are encore's, transformers' differ in float32 rounding (~3e-5)
        assert np.allclose(array, ref, rtol=1e-3, atol=1e-4 if ttype == 1 or table else 1e-6), name


def test_q8_0_and_q4_0_files_hold_ggml_blocks_of_the_weights(whisper_dir, model, tmp_path):
    pytest.importorskip("gguf")
    expected = hf_weights(whisper_dir)
    names = [
        "decoder.token_embedding.weight",
        "encoder.blocks.1.mlp.2.weight",
        "decoder.blocks.0.cross_attn.key.weight",
    ]
    # (file type, header ftype: 1000 * version 2 + ggml's, tensor type, the error bound of a block's largest |w|)
    for qtype, ftype, ttype, bound in (("Q8_0", 2007, 8, 0.5 / 127 + 1e-3), ("Q4_0", 2002, 2, 1 / 8 + 1e-3)):
        got = read_ggml(save_ggml(model, tmp_path / f"{qtype}.bin", qtype=qtype))
        assert got["hparams"][-1] == ftype  # as whisper.cpp's quantize writes it
        for name in names:
            kind, array = got["tensors"][name]
            ref = expected[name]
            assert kind == ttype and array.shape == ref.shape
            blocks = ref.reshape(ref.shape[0], -1, 32)  # 32 weights a block along the rows
            error = np.abs(array.reshape(blocks.shape) - blocks)
            assert (error <= bound * np.abs(blocks).max(-1, keepdims=True)).all(), (qtype, name)
        assert got["tensors"]["encoder.conv2.weight"][0] == 1  # convolutions stay F16, norms F32
        assert got["tensors"]["decoder.blocks.0.mlp_ln.weight"][0] == 0


def test_what_whisper_cpp_cannot_run_is_refused_in_one_line(model, tmp_path, whisper_dir, capsys):
    from encore.cli import main
    from encore.config import ModelConfig
    from encore.model.io import build

    with pytest.raises(ValueError, match="not a Whisper model"):
        save_ggml(build(ModelConfig.preset("encdec-tiny")), tmp_path / "t5.bin")
    with pytest.raises(ValueError, match="not tied"):
        save_ggml(build(model.config.replace(tie_embeddings=False)), tmp_path / "untied.bin")
    with pytest.raises(ValueError, match="expected one of F32, F16"):
        save_ggml(model, tmp_path / "q.bin", qtype="Q4_K")
    with pytest.raises(ValueError, match="expected an encore model"):
        save_ggml(torch.nn.Linear(2, 2), tmp_path / "x.bin")
    assert main(["bench", "--model", "encdec-tiny", "--vs-whispercpp", "--json", ""]) == 2
    assert "--vs-whispercpp times a Whisper model" in capsys.readouterr().err


def test_without_pywhispercpp_the_bench_names_the_extra(whisper_dir, monkeypatch, capsys):
    from encore.cli import main

    monkeypatch.setitem(__import__("sys").modules, "pywhispercpp", None)  # import raises ImportError
    assert main(["bench", "--model", str(whisper_dir), "--vs-whispercpp", "--repeats", "1", "--json", ""]) == 2
    assert "pip install 'encore[whispercpp]'" in capsys.readouterr().err


def test_whisper_cpp_gives_encores_logits_step_by_step(model, tmp_path):
    """whisper.cpp on the file, fed encore's greedy tokens: the logits of the prompt and of every step
    within its F16 arithmetic of encore's fp32 ones, and the same argmax wherever encore's is not a near-tie."""
    pytest.importorskip("pywhispercpp")
    from encore.bench.whispercpp import WhisperCpp

    features = torch.randn(1, 80, N_FRAMES, generator=torch.Generator().manual_seed(1)) * 0.5
    prompt, steps = [SOT, NO_TIMESTAMPS], 8
    with torch.no_grad():
        logits, cache = model.prefill(features, None, steps + 1, decoder_prompt=torch.tensor([prompt]))
        ours, tokens = [logits[0].numpy().copy()], []
        for _ in range(steps):
            tokens.append(int(logits.argmax(-1)))
            logits = model.decode_step(torch.tensor(tokens[-1:]), cache)
            ours.append(logits[0].numpy().copy())
    assert len(set(tokens)) > 2  # a varied rollout, not one token repeated
    # whisper.cpp computes with F16 activations, K/V and im2col and a tabulated tanh GELU: ~3% of the scale here
    for qtype, tolerance in (("F16", 0.05), ("Q8_0", 0.08)):
        cpp = WhisperCpp(str(save_ggml(model, tmp_path / f"{qtype}.bin", qtype=qtype)), threads=1)
        try:
            cpp.encode(features[0].numpy())
            theirs = [cpp.decode(prompt, 0)] + [cpp.decode([t], len(prompt) + k) for k, t in enumerate(tokens)]
        finally:
            cpp.close()
        for step, (a, b) in enumerate(zip(ours, theirs)):
            bound = tolerance * np.abs(a).max()
            assert np.abs(a - b).max() < bound, (qtype, step)
            top2 = np.sort(a)[-2:]
            if top2[1] - top2[0] > 2 * bound:
                assert a.argmax() == b.argmax(), (qtype, step)


def test_bench_against_whisper_cpp_on_the_same_weights(whisper_dir, tmp_path, monkeypatch):
    """`--vs-whispercpp`: whisper.cpp rows (F16 at none, Q8_0 at int8) beside encore's, from ggml files
    written once into the bench cache."""
    pytest.importorskip("pywhispercpp")
    from encore.cli import main

    monkeypatch.setenv("ENCORE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "speech.json"
    argv = ["bench", "--model", str(whisper_dir), "--quantize", "none", "int8", "--vs-whispercpp", "--repeats", "1",
            "--output-len", "4", "--threads", "1", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["engine"], r["quantize"]) for r in rows] == [
        ("encore", "none"), ("encore", "int8"), ("whisper.cpp", "F16"), ("whisper.cpp", "Q8_0"),
    ]  # fmt: skip
    assert all(r["first_token_s"] > 0 and r["decode_tok_s"] > 0 and r["rtf"] > 0 for r in rows)
    assert rows[-1]["threads"] == 1
    assert len(list((tmp_path / "cache" / "bench").glob("ggml-whisper-*/ggml-model.bin"))) == 2
