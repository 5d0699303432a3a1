"""The manifest of an exported model (`encore_onnx.json`): what the graphs are, their inputs and
outputs, the special ids, the opset and the quantization. Written by `encore export`, read by
`encore.onnx.OnnxGenerator`; no torch on either side of this file.

    {"format": "encore-onnx-v1", "arch": "encdec" | "deconly", "opset": 20,
     "quantization": null | "int8" | "qdq-int8", "static": null | {"batch_size", "max_input_len", "max_new_tokens"},
     "model": {"n_decoder_layers", "n_kv_heads", "head_dim", "vocab_size", "max_seq_len"},
     "special_ids": {"pad", "bos", "eos", "extra_eos": [...]}, "tokenizer": "tokenizer.json" | null,
     "source_layout": "encore" | "bos" | "plain", "encoder_input": "tokens" | "audio",
     "graphs": {NAME: {"file", "inputs": {name: {"dtype", "shape"}}, "outputs": {...}}}}

Graphs: an encoder-decoder has `encoder` (input_ids, attention_mask -> cross_k, cross_v of every
decoder layer, [L, B, K, S, Dh]) and `decoder_step`; a decoder-only model has `prefill` (right-padded
input_ids, lengths -> logits, self_k, self_v) and `decoder_step` (tokens, positions, past_k.i /
past_v.i for each layer i [B, K, T, Dh], then for an encoder-decoder cross_k.i, cross_v.i, cross_mask
-> logits, new_k, new_v [L, B, K, 1, Dh]: the runtime writes them at each row's position). Shapes
name their dynamic axes ("batch", "input_len", "self_len"); a `--static` export has numbers there.

A speech model's export (Whisper; "encoder_input": "audio") has `encoder` (input_features [B, M, 3000]
-> cross_k, cross_v [L, B, K, 1500, Dh]), `decoder_prompt` (tokens [B, P], logits_at [B, n], cross_k,
cross_v -> logits [B, n, V], self_k, self_v [L, B, K, P, Dh]) and `decoder_step` without `cross_mask`;
its `config.json` (encore's model config) and `generation_config.json` lie beside the tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encore.config import SOURCE_LAYOUTS  # stdlib only: no torch

FORMAT = "encore-onnx-v1"
MANIFEST = "encore_onnx.json"
GRAPHS = {"encdec": ("encoder", "decoder_step"), "deconly": ("prefill", "decoder_step")}
SPEECH_GRAPHS = ("encoder", "decoder_prompt", "decoder_step")


@dataclass
class Manifest:
    arch: str
    opset: int
    quantization: str | None
    static: dict[str, int] | None
    model: dict[str, int]
    special_ids: dict[str, int]
    graphs: dict[str, dict[str, Any]]
    tokenizer: str | None = None
    versions: dict[str, str] | None = None
    source_layout: str = "encore"  # how a text's ids are laid out (encore.ModelConfig.source_layout)
    source_template: list[list[int]] | None = None  # [prefix, suffix] of a "template" layout
    encoder_input: str = "tokens"  # "audio": a speech model's export (encore.audio.onnx.OnnxWhisper runs it)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **self.__dict__}, indent=2) + "\n"

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        """The manifest of an export directory, checked: a ValueError / FileNotFoundError naming the
        file and the field that is wrong."""
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (not a directory written by `encore export`)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: field 'format' must be {FORMAT!r}, got {data.get('format')!r}")
        fields = set(cls.__dataclass_fields__)
        optional = {"tokenizer", "versions", "source_layout", "source_template", "encoder_input"}
        missing = sorted(fields - set(data) - optional)
        if missing:
            raise ValueError(f"{path}: missing field(s) {missing}")
        manifest = cls(**{k: data[k] for k in fields if k in data})
        if manifest.arch not in GRAPHS:
            raise ValueError(f"{path}: field 'arch' must be 'encdec' or 'deconly', got {manifest.arch!r}")
        if manifest.encoder_input not in ("tokens", "audio"):
            raise ValueError(f"{path}: field 'encoder_input' must be 'tokens' or 'audio'")
        for name in SPEECH_GRAPHS if manifest.encoder_input == "audio" else GRAPHS[manifest.arch]:
            graph = manifest.graphs.get(name)
            if not isinstance(graph, dict) or not (Path(directory) / str(graph.get("file"))).is_file():
                raise FileNotFoundError(f"{path}: graph {name!r} is missing or its file is not in {directory}")
        for key in ("pad", "bos", "eos"):
            if not isinstance(manifest.special_ids.get(key), int):
                raise ValueError(f"{path}: field 'special_ids.{key}' must be an integer")
        extra = manifest.special_ids.get("extra_eos", [])
        if not isinstance(extra, list) or not all(isinstance(i, int) for i in extra):
            raise ValueError(f"{path}: field 'special_ids.extra_eos' must be a list of integers")
        if manifest.source_layout not in SOURCE_LAYOUTS:
            raise ValueError(f"{path}: field 'source_layout' must be one of {', '.join(SOURCE_LAYOUTS)}")
        template = manifest.source_template or [[], []]
        if len(template) != 2 or not all(isinstance(i, int) for part in template for i in part):
            raise ValueError(f"{path}: field 'source_template' must be [prefix ids, suffix ids]")
        return manifest
