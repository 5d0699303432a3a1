"""A Llama-family decoder-only model as a GGUF file, llama.cpp's format (the `gguf` package writes it).

    save_gguf(model, "model.gguf")                    # F32: the exact weights
    save_gguf(model, "model.q8.gguf", qtype="Q8_0")   # gguf-py's reference quantizers: Q8_0, Q4_0, Q4_1

The bench's llama.cpp anchor (`encore bench --vs-llamacpp`) writes the weights encore runs this way,
then lets llama.cpp's own quantizer make Q8_0 / Q4_0 (its default per-tensor choices). The model must
be one llama.cpp's `llama` architecture expresses: SwiGLU, plain RMSNorm, no biases, RoPE without
scaling (`LlamaAdapter.why_not` says what does not fit). Tensors go through the Llama adapter's
`to_hf` (q/k/v and gate/up split back) and gguf's own name map, so the names are convert_hf_to_gguf's.

The vocabulary is written as token ids only (`<t0>`, `<t1>`, ...; a byte-level BPE
with one merge that never applies):
llama.cpp needs one to load a model, and the bench feeds and reads ids, never text. Such a file is
not for chat: a GGUF with a real tokenizer comes from llama.cpp's convert_hf_to_gguf.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from encore.config import ModelConfig
from encore.convert.adapter import ConversionError
from encore.convert.registry import ADAPTERS
from encore.lazy import require

QTYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")


def why_not_llama(config: ModelConfig) -> str | None:
    """None when llama.cpp's `llama` architecture expresses `config`, else why not (a few words)."""
    why = ADAPTERS["llama"].why_not(config)
    if why is None and config.rope_params:
        why = f"its RoPE scaling ({config.rope_params.get('rope_type', 'custom')}) is not written to GGUF here"
    return why


def rope_permute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q / k rows from the rotate-half RoPE layout (transformers, encore) to the interleaved pairs
    llama.cpp's `llama` architecture rotates (convert_hf_to_gguf's permute; transformers' GGUF reader
    undoes it)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, np.ndarray]:
    """GGUF name -> fp32 array for every tensor of a Llama-family model's state dict."""
    gguf = require("gguf", "gguf")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.n_decoder_layers)
    out = {}
    for hf_name, tensor in ADAPTERS["llama"].to_hf(state, config).items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConversionError(f"{hf_name}: no GGUF name for this tensor in llama.cpp's llama architecture")
        tensor = tensor.detach().float().cpu()
        if hf_name.endswith("q_proj.weight"):
            tensor = rope_permute(tensor, config.n_heads)
        elif hf_name.endswith("k_proj.weight"):
            tensor = rope_permute(tensor, config.n_kv_heads)
        out[name] = tensor.numpy()
    return out


def save_gguf(model: torch.nn.Module, path: str | Path, qtype: str = "F32") -> Path:
    """Write `model` (a Llama-family `DecoderOnly`) as one GGUF file; matrices in `qtype`, norms in F32."""
    gguf = require("gguf", "gguf")
    config: ModelConfig = model.config
    why = why_not_llama(config)
    if why:
        raise ConversionError(f"GGUF: llama.cpp's llama architecture cannot run this model: {why}")
    if qtype not in QTYPES:
        raise ValueError(f"GGUF qtype {qtype!r}: expected one of {', '.join(QTYPES)}")
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    _write_config(writer, config, gguf.LlamaFileType[{"F32": "ALL_F32"}.get(qtype, "MOSTLY_" + qtype)])
    _write_vocabulary(writer, config)
    quant = gguf.GGMLQuantizationType[qtype]
    for name, array in gguf_tensors(model.state_dict(), config).items():
        if array.ndim == 1 or quant == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        elif quant == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, quant), raw_dtype=quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _write_config(writer, config: ModelConfig, file_type) -> None:
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_decoder_layers)
    writer.add_feed_forward_length(config.mlp_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)


def _write_vocabulary(writer, config: ModelConfig) -> None:
    """Token ids only: `<tN>` pieces of a byte-level BPE whose one merge never applies (see the module's
    docstring)."""
    gguf = require("gguf", "gguf")
    special = {config.pad_token_id, config.bos_token_id, config.eos_token_id, *config.extra_eos_token_ids}
    control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([f"<t{i}>" for i in range(config.vocab_size)])
    writer.add_token_types([control if i in special else normal for i in range(config.vocab_size)])
    writer.add_token_merges(["<t 0"])  # llama.cpp wants merges; this one never applies to a <tN> piece
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_add_bos_token(False)
