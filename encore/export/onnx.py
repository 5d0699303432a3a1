"""`export_onnx(model, directory, ...)`: an encore model as ONNX graphs plus a manifest, ready for
`encore.onnx.OnnxGenerator` (onnxruntime, no torch) and for NPU compilers (`static=`).

The graphs are the torch engine's own code, traced by `torch.onnx.export(dynamo=True)`:

- encoder-decoder: `encoder` = `EncoderDecoder.cross_kv` (input_ids, attention_mask -> the cross K/V
  of every decoder layer: computed once per request), `decoder_step` = `decode_step` (tokens,
  positions, each layer's past K/V and cross K/V, the cross mask -> logits and the step's new K/V);
- decoder-only: `prefill` = `DecoderOnly.prefill_rows` (right-padded input_ids, lengths -> last
  logits, the prompt's K/V) and `decoder_step` = `decode_step`;
- a speech model (Whisper): `encoder` (log-mel frames -> the cross K/V), `decoder_prompt` =
  `decode_prompt` (the window's prompt in one pass, logits where asked) and `decoder_step`, whose
  decoders read one window's cross K/V for all their rows (`encore.audio.onnx` runs them).

The step reads each layer's past K/V (one input per layer, [B, K, T, Dh]) with a mask from
`positions`, attends to its new K/V beside them, and returns the new K/V [L, B, K, 1, Dh]; the runtime
writes them into its buffers at each row's position (`PastCache`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from encore.model.cache import GenerationCache
from encore.onnx.manifest import MANIFEST, Manifest

OPSET = 23  # attention as one ONNX Attention op (onnxruntime >= 1.22 runs it fused)
STATIC_OPSET = 20  # static (NPU) exports: attention as MatMul / Softmax, which NPU compilers take
REVISION = 3  # of the graphs' layout; caches of exports (the bench's) are keyed by it
EXTERNAL_DATA_BYTES = 1 << 30  # graphs with more weights keep them in a .data file beside the .onnx


class EncoderGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.cross_kv(input_ids, attention_mask.bool())


class AudioEncoderGraph(nn.Module):
    """A speech model's encoder: log-mel frames [B, M, 3000] -> every decoder layer's cross K/V
    [L, B, K, 1500, Dh] (nothing padded: a window is always 30 s)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_features: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.cross_kv(input_features, None)


class PromptGraph(nn.Module):
    """A speech model's decoder prompt in one pass (`EncoderDecoder.decode_prompt`): tokens [B, P] (the
    task tokens after the previous text) over the cross K/V [L, B, K, S, Dh] -> the logits at each row's
    positions `logits_at` [B, n] ([B, n, V]; Whisper reads its no-speech probability at the start
    token) and the prompt's self K/V [L, B, K, P, Dh]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, tokens: Tensor, logits_at: Tensor, cross_k: Tensor, cross_v: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        B, P = tokens.shape
        config = self.model.config
        cache = GenerationCache.allocate(config, B, 0, P, tokens.device, cross_k.dtype)
        cache.cross_k, cache.cross_v = cross_k, cross_v
        logits = self.model.decode_prompt(tokens, cache, logits_at)
        return logits, cache.k, cache.v


class PrefillGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, S = input_ids.shape
        cache = GenerationCache.allocate(self.model.config, B, S, 0, input_ids.device, self.model.embed.weight.dtype)
        logits = self.model.prefill_rows(input_ids, lengths, cache)
        return logits, cache.k, cache.v


class PastCache:
    """The decode step's cache, as an exported step sees it: each layer's past K/V a separate input
    [B, K, T, Dh] that the graph only reads, its new K/V appended after them (attention does not care
    where a key sits: RoPE has already placed it) and returned, so the runtime writes them into its
    own buffers at each row's position. No graph-side copy or scatter of the cache (onnxruntime's
    ScatterElements and Split of an [L, ...] cache cost more than the step's matrix products)."""

    prefilling = False

    def __init__(self, k: list[Tensor], v: list[Tensor], length: Tensor, cross: tuple | None = None):
        self.k, self.v, self.length = k, v, length
        self.cross_k, self.cross_v, self.cross_mask = cross or (None, None, None)
        self.new_k: list[Tensor] = []
        self.new_v: list[Tensor] = []

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2] + 1

    def key_positions(self) -> Tensor:
        """[B, T + 1]: the past keys at their positions, the new key (last) at the row's."""
        past = torch.arange(self.k[0].shape[2], device=self.length.device)[None].expand(self.length.shape[0], -1)
        return torch.cat([past, self.length[:, None]], dim=1)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.new_k.append(k)
        self.new_v.append(v)
        return torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)

    def step_mask(self, window: int = 0) -> Tensor:
        """[B, 1, 1, T + 1]: the row's written past positions (the last `window` - 1 of them for a
        sliding layer), and its new key (last)."""
        positions = torch.arange(self.k[0].shape[2], device=self.length.device)[None, :]
        past = positions < self.length[:, None]
        if window:
            past &= positions > self.length[:, None] - window
        return torch.cat([past, torch.ones_like(past[:, :1])], dim=1)[:, None, None, :]


class StepGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, positions: Tensor, *caches: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """caches: past_k.0 .. past_k.{L-1}, past_v.0 .., then (encoder-decoder) cross_k.0 .., cross_v.0 ..,
        cross_mask. Returns logits [B, V] and this step's K/V of every layer [L, B, K, 1, Dh]."""
        L = self.model.config.n_decoder_layers
        cross = None
        if len(caches) > 2 * L:  # (a speech model's step has no cross_mask: its windows are never padded)
            mask = caches[4 * L].bool() if len(caches) > 4 * L else None
            cross = (caches[2 * L : 3 * L], caches[3 * L : 4 * L], mask)
        cache = PastCache(list(caches[:L]), list(caches[L : 2 * L]), positions.clone(), cross)
        logits = self.model.decode_step(tokens, cache)
        return logits, torch.stack(cache.new_k), torch.stack(cache.new_v)


def _examples(config, batch: int, input_len: int, self_len: int) -> dict[str, dict[str, tuple[Tensor, dict]]]:
    """Per graph: input name -> (example tensor, {axis: dimension name})."""
    L, K, Dh = config.n_decoder_layers, config.n_kv_heads, config.head_dim
    ids = torch.full((batch, input_len), 3, dtype=torch.long)
    layer = lambda n, axis: (torch.zeros(batch, K, n, Dh), {0: "batch", 2: axis})
    step = {
        "tokens": (torch.full((batch,), config.bos_token_id, dtype=torch.long), {0: "batch"}),
        "positions": (torch.zeros(batch, dtype=torch.long), {0: "batch"}),
    }
    for kind in ("past_k", "past_v"):
        step.update({f"{kind}.{i}": layer(self_len, "self_len") for i in range(L)})
    if config.arch == "deconly":
        lengths = torch.full((batch,), input_len, dtype=torch.long)
        prefill = {"input_ids": (ids, {0: "batch", 1: "input_len"}), "lengths": (lengths, {0: "batch"})}
        return {"prefill": prefill, "decoder_step": step}
    if config.encoder_input == "audio":
        return _speech_examples(config, batch, step)
    for kind in ("cross_k", "cross_v"):
        step.update({f"{kind}.{i}": layer(input_len, "input_len") for i in range(L)})
    axes = {0: "batch", 1: "input_len"}
    step["cross_mask"] = (torch.ones(batch, input_len, dtype=torch.long), axes)
    encoder = {"input_ids": (ids, axes), "attention_mask": (torch.ones_like(ids), axes)}
    return {"encoder": encoder, "decoder_step": step}


def _speech_examples(config, batch: int, step: dict) -> dict[str, dict[str, tuple[Tensor, dict]]]:
    """A speech model's graphs: `encoder` (log-mel frames), `decoder_prompt`, `decoder_step`. Their
    decoders read one window's cross K/V (batch 1, the encoder's full length, no mask) whatever their
    rows: a beam search's hypotheses share it, as in the torch loop (`CrossAttention`'s one pass)."""
    L, K, Dh = config.n_decoder_layers, config.n_kv_heads, config.head_dim
    S = config.encoder_config().max_seq_len  # 1,500 positions: 3,000 frames
    frames = torch.randn(batch, config.audio_mels, 2 * S) * 0.5
    cross = lambda: (torch.zeros(L, 1, K, S, Dh), {})
    for kind in ("cross_k", "cross_v"):
        step.update({f"{kind}.{i}": (torch.zeros(1, K, S, Dh), {}) for i in range(L)})
    prompt = {
        "tokens": (torch.full((batch, 4), config.bos_token_id, dtype=torch.long), {0: "batch", 1: "prompt_len"}),
        "logits_at": (torch.tensor([[0, 3]] * batch), {0: "batch", 1: "n_logits"}),
        "cross_k": cross(),
        "cross_v": cross(),
    }
    return {"encoder": {"input_features": (frames, {0: "batch"})}, "decoder_prompt": prompt, "decoder_step": step}


OUTPUTS = {
    "encoder": ["cross_k", "cross_v"],
    "decoder_prompt": ["logits", "self_k", "self_v"],
    "prefill": ["logits", "self_k", "self_v"],
    "decoder_step": ["logits", "new_k", "new_v"],
}
MODULES = {
    "encoder": EncoderGraph,
    "prefill": PrefillGraph,
    "decoder_step": StepGraph,
    "decoder_prompt": PromptGraph,
}


def _module(model: nn.Module, name: str) -> nn.Module:
    speech = name == "encoder" and model.config.encoder_input == "audio"
    return AudioEncoderGraph(model) if speech else MODULES[name](model)


def _export_graph(
    model: nn.Module, name: str, inputs: dict, path: Path, static: bool, opset: int = OPSET
) -> dict[str, Any]:
    """Trace one graph to `path`; returns its manifest entry (inputs / outputs with named axes)."""
    from torch.export import Dim

    args = tuple(t for t, _ in inputs.values())
    dims: dict[str, Any] = {}
    shapes = None
    if not static:  # one spec per input, the same Dim for the same axis name
        specs = [{axis: dims.setdefault(d, Dim(d)) for axis, d in axes.items()} for _, axes in inputs.values()]
        # the step's signature is (tokens, positions, *caches): its specs nest the same way
        shapes = (*specs[:2], tuple(specs[2:])) if name == "decoder_step" else tuple(specs)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*")
        program = torch.onnx.export(
            _module(model, name).eval(),
            args,
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=list(inputs),
            output_names=OUTPUTS[name],
            opset_version=opset,
            verbose=False,
        )
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    program.save(str(path), external_data=weights > EXTERNAL_DATA_BYTES)

    def spec(t: Tensor, axes: dict[int, str]) -> dict[str, Any]:
        shape = [t.shape[i] if static or i not in axes else axes[i] for i in range(t.dim())]
        return {"dtype": str(t.dtype).removeprefix("torch."), "shape": shape}

    return {
        "file": path.name,
        "inputs": {n: spec(t, axes) for n, (t, axes) in inputs.items()},
        "outputs": OUTPUTS[name],
    }


def export_onnx(
    model: nn.Module,
    directory: str | Path,
    *,
    quantize: str | None = None,
    static: dict[str, int] | None = None,
    calibration: list[list[int]] | None = None,
    opset: int | None = None,
) -> Manifest:
    """Write `model`'s graphs, its tokenizer and `encore_onnx.json` to `directory`.

    `quantize`: None (fp32), "int8" (dynamic: int8 weights, activations quantized per call; for CPUs),
    "int4" (onnxruntime's MatMulNBits for the decoding layers, Q4_1's levels; encoder and head int8) or
    "qdq-int8" (static QuantizeLinear / DequantizeLinear pairs with activation ranges from
    `calibration`, a list of input id sequences: the form NPU execution providers take). `static`:
    {"batch_size", "max_input_len", "max_new_tokens"} fixes every shape (what NPU compilers need);
    otherwise batch and lengths are dynamic. `opset`: default 23 (attention as one Attention op), 20
    for static exports (attention decomposed into MatMul / Softmax: what NPU compilers take)."""
    from encore.export.quantize import calibration_feeds, quantize_graphs
    from encore.infer.optimize import optimized

    if optimized(model):
        raise ValueError(
            "export the plain model: call encore.deoptimize(model) first (inference kernels do not export)"
        )
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("export a float32 CPU model (model.float().cpu()); int8 comes from quantize='int8'")
    if quantize not in (None, "int8", "int4", "qdq-int8"):
        raise ValueError(f"quantize must be None, 'int8', 'int4' or 'qdq-int8', got {quantize!r}")
    if quantize == "qdq-int8" and not calibration:
        raise ValueError("qdq-int8 needs calibration inputs (encore export --calibration TASK_OR_FILE)")
    config = model.config
    if config.encoder_input == "audio" and (static or quantize == "qdq-int8"):
        raise ValueError(
            "a speech model exports with dynamic shapes and quantize None, 'int8' or 'int4' "
            "(--static fixes a text prompt's shapes; qdq-int8 calibrates on text prompts)"
        )
    model.eval()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if static:
        batch, input_len = static["batch_size"], static["max_input_len"]
        self_len = config.cache_positions(input_len, static["max_new_tokens"])[0]
    else:
        batch, input_len, self_len = 2, 8, 12
    examples = _examples(config, batch, input_len, self_len)
    opset = opset or (STATIC_OPSET if static else OPSET)
    graphs = {}
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for name, inputs in examples.items():
            graphs[name] = _export_graph(model, name, inputs, Path(tmp) / f"{name}.onnx", bool(static), opset)
        if quantize:
            feeds = calibration_feeds(model, calibration, static) if quantize == "qdq-int8" else None
            quantize_graphs(Path(tmp), graphs, quantize, config.vocab_size, feeds)
        for f in Path(tmp).iterdir():
            shutil.move(str(f), directory / f.name)
    tokenizer = None
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save_pretrained(str(directory))
        tokenizer = "tokenizer.json" if (directory / "tokenizer.json").is_file() else None
    if config.encoder_input == "audio":  # what the speech runtime's loop reads beside the graphs
        config.save(directory / "config.json")
        generation = json.dumps(getattr(model, "generation_config", {}) or {}, indent=2)
        (directory / "generation_config.json").write_text(generation + "\n")
    import onnx

    manifest = Manifest(
        arch=config.arch,
        opset=opset,
        quantization=quantize,
        static=dict(static) if static else None,
        model={
            "n_decoder_layers": config.n_decoder_layers,
            "n_kv_heads": config.n_kv_heads,
            "head_dim": config.head_dim,
            "vocab_size": config.vocab_size,
            "max_seq_len": config.max_seq_len,
        },
        special_ids={
            "pad": config.pad_token_id,
            "bos": config.bos_token_id,
            "eos": config.eos_token_id,
            "extra_eos": list(config.eos_token_ids[1:]),
        },
        source_layout=config.source_layout,
        source_template=[list(part) for part in config.template()],
        encoder_input=config.encoder_input,
        graphs=graphs,
        tokenizer=tokenizer,
        versions={"torch": torch.__version__, "onnx": onnx.__version__},
    )
    (directory / MANIFEST).write_text(manifest.to_json())
    return manifest
