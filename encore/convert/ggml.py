"""A Whisper model as whisper.cpp's ggml model file (`ggml-model.bin`, the legacy ggml format its
`models/convert-pt-to-ggml.py` and `convert-h5-to-ggml.py` write, which `whisper_init_from_file` loads).

    save_ggml(model, "ggml-model.bin")                    # F16: whisper.cpp's usual files
    save_ggml(model, "ggml-model-q8_0.bin", qtype="Q8_0")  # the matrices in ggml's Q8_0 blocks

(F32 files are the format too, but whisper.cpp 1.8 aborts on one in its convolution: issue #2557.)

The file, all little-endian:

- the magic 0x67676d6c ("ggml"), then 11 int32 hyperparameters: n_vocab, n_audio_ctx, n_audio_state,
  n_audio_head, n_audio_layer, n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype
  (a quantized file's ftype is 2000 + ggml's file type, as whisper.cpp's `quantize` writes it);
- the mel filters: n_mels, 201, then [n_mels, 201] float32 (Slaney, 0-8 kHz: `audio.features`);
- the vocabulary: a count, then each token's bytes (length-prefixed), the byte-level BPE pieces up to
  <|endoftext|> decoded through GPT-2's byte table; whisper.cpp names the special tokens above them
  itself from n_vocab. A model without a tokenizer (a preset's random weights) writes none: whisper.cpp
  then names every id, and only ids can be fed and read;
- each tensor: n_dims, the name's length, the ggml type, the dims innermost first, the name, the data.

The tensor types are those whisper.cpp's loader allocates (`whisper_model_load`): the 2-D projections
and the token embedding in the file's type, the convolution weights F16 (F32 in an F32 file), every
bias, norm and both positional tables F32; the convolution biases are [n_state, 1]. The names are
openai's (`encoder.blocks.0.attn.query.weight`). whisper.cpp has no key bias (encore's zeros are left
out), ties the output head to the token embedding and builds MLPs 4x the width: a model outside that
is refused with the reason. Quantized blocks come from gguf-py's reference quantizers (ggml's own
rounding), which the `gguf` package installs.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from encore.config import ModelConfig
from encore.convert.adapter import ConversionError
from encore.convert.registry import ADAPTERS
from encore.lazy import require

MAGIC = 0x67676D6C
QNT_VERSION, QNT_VERSION_FACTOR = 2, 1000  # ggml's quantization version, as whisper.cpp's quantize writes it
# the file's type -> (ggml_ftype in the header, ggml_type of its matrices)
QTYPES = {"F32": (0, 0), "F16": (1, 1), "Q4_0": (2, 2), "Q4_1": (3, 3), "Q5_0": (8, 6), "Q5_1": (9, 7), "Q8_0": (7, 8)}
F32, F16 = 0, 1
BLOCK = 32  # the elements of one quantized block in every type above
ALWAYS_F32 = (
    "encoder.positional_embedding",
    "decoder.positional_embedding",
    "encoder.conv1.bias",
    "encoder.conv2.bias",
)

# transformers' Whisper names (after "model.") -> openai's, which whisper.cpp reads
_TOP = {
    "encoder.conv1": "encoder.conv1",
    "encoder.conv2": "encoder.conv2",
    "encoder.layer_norm": "encoder.ln_post",
    "decoder.embed_tokens": "decoder.token_embedding",
    "decoder.layer_norm": "decoder.ln",
}
_TABLES = {"encoder.embed_positions.weight": "encoder.positional_embedding",
           "decoder.embed_positions.weight": "decoder.positional_embedding"}  # fmt: skip
_BLOCK = {
    "self_attn.q_proj": "attn.query",
    "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}


def why_not_whispercpp(config: ModelConfig) -> str | None:
    """None when whisper.cpp's graph expresses `config`, else why not (a few words)."""
    if config.encoder_input != "audio":
        return f"it is not a Whisper model (its encoder reads {config.encoder_input}, family {config.family!r})"
    why = ADAPTERS["whisper"].why_not(config)
    if why:
        return why
    enc = config.encoder_config()
    checks = {
        "its output head is not tied to the token embedding (whisper.cpp ties them)": not config.tie_embeddings,
        "it scales its embeddings (whisper.cpp does not)": config.embed_scale,
        f"its MLPs are {config.mlp_dim} / {enc.mlp_dim} wide (whisper.cpp builds 4 x {config.d_model})": (
            config.mlp_dim != 4 * config.d_model or enc.mlp_dim != 4 * config.d_model
        ),
        "its heads do not split d_model evenly": config.n_heads * config.head_dim != config.d_model
        or enc.n_heads * enc.head_dim != config.d_model,
        f"it reads {config.audio_mels} mel bins (whisper.cpp: 80 or 128)": config.audio_mels not in (80, 128),
    }
    return next((why for why, bad in checks.items() if bad), None)


def ggml_name(hf_name: str) -> str:
    """A transformers Whisper tensor name -> whisper.cpp's (openai's): `model.encoder.layers.0.fc1.weight`
    -> `encoder.blocks.0.mlp.0.weight`."""
    name = hf_name.removeprefix("model.")
    if name in _TABLES:
        return _TABLES[name]
    stem, _, kind = name.rpartition(".")
    if stem in _TOP:
        return f"{_TOP[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) > 3 and parts[1] == "layers" and ".".join(parts[3:]) in _BLOCK:
        return f"{parts[0]}.blocks.{parts[2]}.{_BLOCK['.'.join(parts[3:])]}.{kind}"
    raise ConversionError(f"{hf_name}: no whisper.cpp name for this tensor")


def ggml_tensors(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, np.ndarray]:
    """whisper.cpp name -> fp32 array (transformers' shapes; the convolution biases [n_state, 1]) for
    every tensor of a Whisper model's state dict."""
    try:
        hf = ADAPTERS["whisper"].to_hf(state, config)
    except KeyError as e:
        raise ConversionError(
            f"ggml: the model's state dict lacks {e.args[0]} (write the model as loaded, before encore.optimize)"
        ) from None
    out = {}
    for hf_name, tensor in hf.items():
        name = ggml_name(hf_name)
        array = tensor.detach().float().cpu().numpy()
        out[name] = array.reshape(-1, 1) if name in ("encoder.conv1.bias", "encoder.conv2.bias") else array
    return out


def tensor_type(name: str, array: np.ndarray, qtype: str) -> int:
    """The ggml type whisper.cpp's loader allocates for this tensor in a file of `qtype`."""
    if qtype == "F32" or array.ndim < 2 or name in ALWAYS_F32:
        return F32
    if array.ndim == 3:  # the convolutions
        return F16
    return QTYPES[qtype][1]


def save_ggml(model: torch.nn.Module, path: str | Path, qtype: str = "F16") -> Path:
    """Write `model` (an encore Whisper model, as loaded) as one whisper.cpp ggml file; its matrices in
    `qtype` (F32, F16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1)."""
    config: ModelConfig | None = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError(f"ggml: expected an encore model, got {type(model).__name__}")
    why = why_not_whispercpp(config)
    if why:
        raise ConversionError(f"ggml: whisper.cpp cannot run this model: {why}")
    if qtype not in QTYPES:
        raise ValueError(f"ggml qtype {qtype!r}: expected one of {', '.join(QTYPES)}")
    if QTYPES[qtype][1] not in (F32, F16) and config.d_model % BLOCK:
        raise ValueError(f"ggml {qtype}: d_model {config.d_model} is not a multiple of its {BLOCK}-element blocks")
    tensors = ggml_tensors(model.state_dict(), config)
    path = Path(path)
    with open(path, "wb") as f:
        _write_header(f, config, qtype)
        _write_filters(f, config.audio_mels)
        _write_vocabulary(f, vocabulary_bytes(getattr(model, "tokenizer", None), config.eos_token_id))
        for name, array in tensors.items():
            _write_tensor(f, name, array, tensor_type(name, array, qtype))
    return path


def _write_header(f: BinaryIO, config: ModelConfig, qtype: str) -> None:
    enc = config.encoder_config()
    ftype = QTYPES[qtype][0]
    if QTYPES[qtype][1] not in (F32, F16):
        ftype += QNT_VERSION * QNT_VERSION_FACTOR
    hparams = [
        config.vocab_size, enc.max_seq_len, config.d_model, enc.n_heads, config.n_encoder_layers,
        config.max_seq_len, config.d_model, config.n_heads, config.n_decoder_layers, config.audio_mels, ftype,
    ]  # fmt: skip
    f.write(struct.pack("<I11i", MAGIC, *hparams))


def _write_filters(f: BinaryIO, n_mels: int) -> None:
    from encore.audio.features import mel_filters

    filters = mel_filters(n_mels).numpy().astype("<f4")  # [n_mels, 201]
    f.write(struct.pack("<2i", *filters.shape))
    f.write(filters.tobytes())


def vocabulary_bytes(tokenizer: Any, eot: int) -> list[bytes]:
    """The bytes of each token below <|endoftext|> (`eot`), as whisper.cpp's converters write them:
    GPT-2's byte-level pieces mapped back to bytes; [] without a tokenizer."""
    if tokenizer is None:
        return []
    decoder = {c: b for b, c in _bytes_to_unicode().items()}
    pieces = tokenizer.convert_ids_to_tokens(list(range(eot)))
    out = []
    for piece in pieces:
        piece = piece or ""
        if all(c in decoder for c in piece):
            out.append(bytes(decoder[c] for c in piece))
        else:  # not a byte-level piece (a word-level tokenizer, an added token): its UTF-8
            out.append(piece.encode("utf-8"))
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (openai/gpt-2's encoder.py)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _write_vocabulary(f: BinaryIO, tokens: list[bytes]) -> None:
    f.write(struct.pack("<i", len(tokens)))
    for token in tokens:
        f.write(struct.pack("<i", len(token)))
        f.write(token)


def _write_tensor(f: BinaryIO, name: str, array: np.ndarray, ggml_type: int) -> None:
    """One tensor: its header (dims innermost first) and its data in `ggml_type`."""
    encoded = name.encode("utf-8")
    f.write(struct.pack("<3i", array.ndim, len(encoded), ggml_type))
    f.write(struct.pack(f"<{array.ndim}i", *reversed(array.shape)))
    f.write(encoded)
    if ggml_type == F32:
        data = np.ascontiguousarray(array, dtype="<f4")
    elif ggml_type == F16:
        data = np.ascontiguousarray(array, dtype="<f2")
    else:
        gguf = require("gguf", "gguf")
        data = gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), gguf.GGMLQuantizationType(ggml_type))
    f.write(data.tobytes())
