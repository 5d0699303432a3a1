"""An analytic cost model of generation: FLOPs, bytes moved, KV-cache bytes and a roofline time.

Pure functions of (ModelConfig, batch size, input length, output length, bytes per element). They
follow what `encore.generate` runs, phase by phase:

* **first token** (`prefill_cost`): encoder-decoder = encoder over the S input tokens + the
  cross-attention K/V projection of the encoder output (once per request, every decoder layer) + one
  decoder step on BOS; decoder-only = the decoder over the S prompt tokens (causal). Both end with the
  LM head on one position per row.
* **decode step j** (`decode_step_cost`, j = 1 .. N-1, producing token j+1): one token per row through
  the decoder. Encoder-decoder self-attention sees j+1 cached positions and cross-attention sees the S
  encoder positions; decoder-only self-attention sees S + j positions.

Counting rules (the assumptions, stated once):

* FLOPs: every weight matrix costs 2 * tokens * its parameters (multiply + add); attention costs
  4 * n_heads * head_dim per (query, key) pair (QK^T and attention x V). Causal prefill counts the
  S(S+1)/2 pairs actually needed, bidirectional encoding S^2. Norms, RoPE, softmax, GELU, residual adds
  and the embedding lookup are left out: O(tokens * d_model) each, under 1% here.
* Bytes: every weight matrix a forward pass touches is read once per forward (the regime of small
  batches, where the weights do not stay in cache between steps; the tied embedding is read in full
  by the LM head); the KV cache is written once per new position and every cached position an
  attention call looks at is read once per call. Activations are left out unless
  `include_activations` (then each matmul also reads its input and writes its output once), because
  fused kernels keep most of them in cache at batch 1.
* Time: a roofline per part (each group of matmuls over the same token count, the attention, the
  head): max(FLOPs / peak FLOP/s, bytes / bandwidth), summed over the parts. No per-op launch or
  Python overhead, so measured times sit above it by a roughly constant factor; the ratios between
  two architectures are what the bench compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from encore.config import ModelConfig
from encore.model.cache import GenerationCache

DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.float64: 8}


def dtype_bytes(dtype: torch.dtype | str) -> int:
    """Bytes per element of a floating dtype (a torch.dtype or its name, e.g. 'bfloat16')."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(str(d).removeprefix('torch.') for d in DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


# --- machine ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """What the roofline needs: sustained matmul FLOP/s and memory-read bytes/s."""

    peak_flops: float
    mem_bandwidth: float  # bytes / s
    measured: bool = False  # True when probed on this machine, False when given by the user

    def __post_init__(self) -> None:
        if not (self.peak_flops > 0 and self.mem_bandwidth > 0):
            raise ValueError(f"Machine needs positive peak_flops and mem_bandwidth, got {self}")


# --- costs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One roofline unit: work that runs at one arithmetic intensity."""

    name: str
    flops: float
    bytes: float

    def time(self, machine: Machine) -> float:
        return max(self.flops / machine.peak_flops, self.bytes / machine.mem_bandwidth)


@dataclass(frozen=True)
class Phase:
    """A forward pass (or the first-token phase) as a list of parts."""

    parts: tuple[Part, ...]

    @property
    def flops(self) -> float:
        return sum(p.flops for p in self.parts)

    @property
    def bytes(self) -> float:
        return sum(p.bytes for p in self.parts)

    def time(self, machine: Machine) -> float:
        return sum(p.time(machine) for p in self.parts)

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)


@dataclass(frozen=True)
class WeightCounts:
    """Parameters of the weight matrices, grouped by when generation uses them."""

    self_attn: int  # per layer: fused QKV + output projection
    cross_q_out: int  # per decoder layer of an encoder-decoder: query + output projection (every step)
    cross_kv: int  # per decoder layer of an encoder-decoder: K/V projection (once per request)
    mlp: int  # per layer
    head: int  # LM head (the tied embedding): vocab x d_model


def weight_counts(config: ModelConfig) -> WeightCounts:
    return WeightCounts(**config.matrix_params())


def _kv_per_position(config: ModelConfig, b: int) -> int:
    """K + V bytes of one position in one layer for one row."""
    return 2 * config.n_kv_heads * config.head_dim * b


def _matmuls(name: str, params: int, tokens: int, wb: int, b: int, io: int, acts: bool) -> Part:
    """`params` weights of `wb` bytes applied to `tokens` rows; `io` = sum of (in + out) features over
    the matrices (activations of `b` bytes)."""
    return Part(name, 2.0 * tokens * params, float(params * wb + (tokens * io * b if acts else 0)))


def _decoder_step_io(config: ModelConfig) -> int:
    """Sum over one decoder layer's per-step matrices of (in + out) features (for activation bytes)."""
    d, q, kv = config.d_model, config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    mlp_in = (2 if config.gated_mlp else 1) * config.mlp_dim
    io = (d + q + 2 * kv) + (q + d) + (d + mlp_in) + (config.mlp_dim + d)
    if config.arch == "encdec":
        io += (d + q) + (q + d)  # cross-attention query and output projections
    return io


def _encoder_layer_io(config: ModelConfig) -> int:
    d, q, kv = config.d_model, config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    mlp_in = (2 if config.gated_mlp else 1) * config.mlp_dim
    return (d + q + 2 * kv) + (q + d) + (d + mlp_in) + (config.mlp_dim + d)


def _check(config: ModelConfig, batch_size: int, input_len: int, n_bytes: int) -> None:
    for name, value in (("batch_size", batch_size), ("input_len", input_len), ("dtype_bytes", n_bytes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    config.validate()


def prefill_cost(
    config: ModelConfig,
    batch_size: int,
    input_len: int,
    dtype_bytes: int = 4,
    include_activations: bool = False,
    weight_bytes: float | None = None,
) -> Phase:
    """Everything up to the first generated token (the time-to-first-token work). `weight_bytes`:
    bytes per weight when they differ from the activations' and the cache's (1 for int8 weights)."""
    _check(config, batch_size, input_len, dtype_bytes)
    B, S, b, acts = batch_size, input_len, dtype_bytes, include_activations
    wb = weight_bytes or b
    w = weight_counts(config)
    attn_pair = 4.0 * config.n_heads * config.head_dim  # FLOPs per (query, key) pair per layer
    kv_pos = _kv_per_position(config, b)
    Ld = config.n_decoder_layers
    head = _matmuls("head", w.head, B, wb, b, config.d_model + config.vocab_size, acts)
    if config.arch == "deconly":
        layers = _matmuls("decoder", Ld * (w.self_attn + w.mlp), B * S, wb, b, Ld * _decoder_step_io(config), acts)
        # causal attention: S(S+1)/2 pairs; K/V written to the cache once and read back once
        attention = Part("attention", Ld * attn_pair * B * S * (S + 1) / 2, float(Ld * B * S * kv_pos * 2))
        return Phase((layers, attention, head))
    Le, enc = config.n_encoder_layers, config.encoder_config()  # the encoder's own widths (T5Gemma 9B-2B)
    we = weight_counts(enc)
    encoder = _matmuls("encoder", Le * (we.self_attn + we.mlp), B * S, wb, b, Le * _encoder_layer_io(enc), acts)
    d, kv = config.encoder_width, 2 * config.n_kv_heads * config.head_dim
    cross_kv = _matmuls("cross_kv", Ld * w.cross_kv, B * S, wb, b, Ld * (d + kv), acts)
    step_params = Ld * (w.self_attn + w.cross_q_out + w.mlp)
    decoder = _matmuls("decoder", step_params, B, wb, b, Ld * _decoder_step_io(config), acts)
    # encoder: S^2 pairs, K/V transient (activations); decoder BOS step: 1 self pair + S cross pairs;
    # cache traffic: write the cross K/V (S positions) and the BOS self K/V, read both back once
    enc_pairs = Le * B * S * S
    dec_pairs = Ld * B * (1 + S)
    enc_kv_bytes = Le * B * S * _kv_per_position(enc, b) if acts else 0
    enc_pair = 4.0 * enc.n_heads * enc.head_dim
    attention = Part(
        "attention", enc_pair * enc_pairs + attn_pair * dec_pairs, float(Ld * B * (S + 1) * kv_pos * 2 + enc_kv_bytes)
    )
    return Phase((encoder, cross_kv, decoder, attention, head))


def decode_step_cost(
    config: ModelConfig,
    batch_size: int,
    input_len: int,
    step: int,
    dtype_bytes: int = 4,
    include_activations: bool = False,
    weight_bytes: float | None = None,
) -> Phase:
    """Decode step `step` (1-based; step j produces token j+1): one token per row through the decoder."""
    _check(config, batch_size, input_len, dtype_bytes)
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be an integer >= 1 (step 0 is the prefill), got {step!r}")
    B, S, b, acts = batch_size, input_len, dtype_bytes, include_activations
    wb = weight_bytes or b
    w = weight_counts(config)
    Ld = config.n_decoder_layers
    attn_pair = 4.0 * config.n_heads * config.head_dim
    kv_pos = _kv_per_position(config, b)
    step_params = Ld * (w.self_attn + w.cross_q_out + w.mlp)
    decoder = _matmuls("decoder", step_params, B, wb, b, Ld * _decoder_step_io(config), acts)
    head = _matmuls("head", w.head, B, wb, b, config.d_model + config.vocab_size, acts)
    # positions each query attends to: encdec = its own outputs (step + 1) + the S encoder states
    keys = (step + 1 + S) if config.arch == "encdec" else (S + step)
    attention = Part("attention", Ld * attn_pair * B * keys, float(Ld * B * (keys + 1) * kv_pos))  # read + 1 write
    return Phase((decoder, attention, head))


def kv_cache_bytes(config: ModelConfig, batch_size: int, input_len: int, output_len: int, dtype_bytes: int = 4) -> int:
    """Bytes of the cache generation allocates: encdec = self K/V over the outputs + cross K/V over the
    input, every decoder layer; deconly = K/V over input + outputs, every layer."""
    _check(config, batch_size, input_len, dtype_bytes)
    return batch_size * GenerationCache.bytes_for(config, input_len, output_len, dtype_bytes)


@dataclass(frozen=True)
class GenerationCost:
    """Cost of one request of `batch_size` rows: S input tokens -> N generated tokens per row."""

    prefill: Phase
    decode_steps: tuple[Phase, ...]  # N - 1 steps
    kv_cache_bytes: int
    batch_size: int
    output_len: int

    @property
    def decode_flops(self) -> float:
        return sum(p.flops for p in self.decode_steps)

    @property
    def decode_bytes(self) -> float:
        return sum(p.bytes for p in self.decode_steps)

    @property
    def flops(self) -> float:
        return self.prefill.flops + self.decode_flops

    @property
    def bytes(self) -> float:
        return self.prefill.bytes + self.decode_bytes

    def first_token_latency(self, machine: Machine) -> float:
        return self.prefill.time(machine)

    def decode_time(self, machine: Machine) -> float:
        return sum(p.time(machine) for p in self.decode_steps)

    def predict(self, machine: Machine) -> dict[str, float]:
        """Roofline predictions with the same definitions as the measured numbers."""
        ttft, decode = self.first_token_latency(machine), self.decode_time(machine)
        n, B = self.output_len, self.batch_size
        return {
            "first_token_latency_s": ttft,
            "decode_tokens_per_s": B * (n - 1) / decode if n > 1 else float("nan"),
            "throughput_tokens_per_s": B * n / (ttft + decode),
        }


def generation_cost(
    config: ModelConfig,
    batch_size: int,
    input_len: int,
    output_len: int,
    dtype_bytes: int = 4,
    include_activations: bool = False,
    weight_bytes: float | None = None,
) -> GenerationCost:
    if not isinstance(output_len, int) or output_len < 1:
        raise ValueError(f"output_len must be a positive integer, got {output_len!r}")
    args = (config, batch_size, input_len)
    extra = (dtype_bytes, include_activations, weight_bytes)
    return GenerationCost(
        prefill=prefill_cost(*args, *extra),
        decode_steps=tuple(decode_step_cost(*args, j, *extra) for j in range(1, output_len)),
        kv_cache_bytes=kv_cache_bytes(*args, output_len, dtype_bytes),
        batch_size=batch_size,
        output_len=output_len,
    )
