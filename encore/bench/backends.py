"""What the bench can time: one `Backend` per way of running a model, all behind one interface.

A `BackendSpec` is a picklable recipe (it crosses into a worker process); `make_backend(spec)` turns
it into a `Backend` there, which builds the model and generates with timestamps. Results carry the
backend's `name`; a backend that copies the shape of an encore model (`mirror`) is compared with it.

Adding a backend: a class with the attributes and methods of `Backend`, one entry in `BACKENDS`, and a
flag in `encore.cli.bench` that adds its spec.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from encore.bench.costmodel import dtype_bytes, kv_cache_bytes
from encore.config import ModelConfig
from encore.model.io import build, load, resolve_model, spec_label


@dataclass
class Timing:
    """One request's clock readings (perf_counter seconds) and the gaps between consecutive tokens."""

    t_call: float
    t_first: float
    t_last: float
    tokens: int  # tokens yielded per row
    intervals: list[float]  # tokens - 1 gaps (seconds); on CUDA from events, without host syncs


@dataclass(frozen=True)
class BackendSpec:
    """A picklable recipe for one model to time; each worker process builds its own from it."""

    kind: str  # a key of BACKENDS
    model: str  # encore: preset / config .json / checkpoint dir; others: the encore model whose shape they copy
    max_len: int  # longest input + output it will see (RoPE tables / positions must cover it)
    device: str
    dtype: str
    seed: int
    cpu_linear: str | None = None  # encore's fp32 CPU kernel, set in the worker before it builds


class Backend(Protocol):
    label: str  # the model's name in the results
    name: str  # the backend's name in the results ("torch", "transformers", ...)
    arch: str  # "encdec" | "deconly"
    cost_config: ModelConfig  # the shapes the cost model prices (for HF: the equivalent encore shapes)
    mirror: str | None  # label of the encore model whose shape this one copies (compared with it)
    sweep: bool  # measured at the sweep lengths too

    def build(self) -> Any: ...
    def timed_generate(self, model: Any, ids: torch.Tensor, n: int) -> Timing: ...
    def kv_cache_bytes(self, model: Any, batch: int, input_len: int, output_len: int) -> int: ...


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_config(spec: str, max_len: int) -> tuple[str, ModelConfig, Path | None]:
    """A model spec -> (label, config whose RoPE tables cover `max_len`, checkpoint dir or None)."""
    config, checkpoint = resolve_model(spec)
    if config.max_seq_len < max_len:  # random weights: RoPE tables simply cover the longest point
        if checkpoint is not None:
            print(f"encore bench: {spec}: max_seq_len {config.max_seq_len} < {max_len}; extending RoPE tables")
        config = config.replace(max_seq_len=max_len)
    return spec_label(spec), config, checkpoint


class EncoreBackend:
    """encore's own generation (`LanguageModel.generate_stream`): a preset / config with random weights
    (seeded), or a checkpoint."""

    name, sweep, mirror = "torch", True, None

    def __init__(self, spec: BackendSpec):
        self.device, self.dtype, self.seed = torch.device(spec.device), getattr(torch, spec.dtype), spec.seed
        self.label, self.cost_config, self.checkpoint = bench_config(spec.model, spec.max_len)
        self.arch = self.cost_config.arch

    def build(self) -> Any:
        if self.checkpoint is not None:
            model = load(
                self.checkpoint, device=self.device, dtype=self.dtype, max_seq_len=self.cost_config.max_seq_len
            )
        else:
            model = build(self.cost_config, seed=self.seed, device=self.device)
        return model.to(dtype=self.dtype).eval()

    def timed_generate(self, model: Any, ids: torch.Tensor, n: int) -> Timing:
        device = self.device
        cuda = device.type == "cuda"
        marks: list = []  # host clock per token on CPU; CUDA events (no host sync) on GPU
        _sync(device)
        t0 = time.perf_counter()
        t_first = None
        for _ in model.generate_stream(ids, max_new_tokens=n, eos_token_id=None, do_sample=False):
            if t_first is None:
                _sync(device)
                t_first = time.perf_counter()
            if cuda:
                marks.append(torch.cuda.Event(enable_timing=True))
                marks[-1].record()
            else:
                marks.append(time.perf_counter())
        _sync(device)
        t_last = time.perf_counter()
        if cuda:
            intervals = [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]
        else:
            intervals = [b - a for a, b in zip(marks, marks[1:])]
        return Timing(t0, t_first, t_last, len(marks), intervals)

    def kv_cache_bytes(self, model: Any, batch: int, input_len: int, output_len: int) -> int:
        return int(model.new_cache(batch, input_len, output_len, device=self.device, dtype=self.dtype).nbytes)


# --- Hugging Face transformers: the same shapes, the library users would otherwise reach for --------


def hf_t5_config(config: ModelConfig):
    """A T5 of the encoder-decoder's shape: same widths and layer counts; T5 has no GQA (every head
    has its own K/V) and relative position buckets instead of RoPE."""
    from transformers import T5Config

    return T5Config(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.head_dim,
        d_ff=config.mlp_dim,
        num_layers=config.n_encoder_layers,
        num_decoder_layers=config.n_decoder_layers,
        num_heads=config.n_heads,
        feed_forward_proj="gelu_new" if config.mlp_type == "gelu" else "gated-silu",
        dropout_rate=0.0,
        layer_norm_epsilon=config.norm_eps,
        tie_word_embeddings=True,
        use_cache=True,
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.bos_token_id,
    )


def hf_llama_intermediate(config: ModelConfig) -> int:
    """Llama's MLP is SwiGLU (3 matrices): 2/3 of a 2-matrix GELU MLP's width keeps the parameters."""
    return config.mlp_dim if config.mlp_type == "swiglu" else round(2 * config.mlp_dim / 3)


def hf_llama_config(config: ModelConfig):
    from transformers import LlamaConfig

    class _LlamaConfig(LlamaConfig):
        # transformers 5 insists on hidden_size % num_attention_heads == 0, although the model uses
        # the explicit head_dim; our 330M shape (1024 wide, 6 heads of 64) fails that check only.
        def validate_architecture(self) -> None:
            pass

    return _LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=hf_llama_intermediate(config),
        num_hidden_layers=config.n_decoder_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        use_cache=True,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )


class _TokenClock:
    """A transformers streamer that only timestamps: the first put() is the prompt (decoder-only) or
    the decoder start token (T5), every later put() one generated token per row (already on the host,
    so CUDA work up to it is done)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class HFBackend:
    """Hugging Face T5 (encoder-decoder) or Llama (decoder-only) with the encore model's shape, random
    weights, its own `generate` with its KV cache."""

    name, sweep = "transformers", False

    def __init__(self, spec: BackendSpec):
        self.device, self.dtype, self.seed = torch.device(spec.device), getattr(torch, spec.dtype), spec.seed
        mirror, config, _ = bench_config(spec.model, spec.max_len)
        self.config, self.arch, self.mirror = config, config.arch, mirror
        if config.arch == "encdec":
            self.hf_name = "hf-t5"
            self.cost_config = config.replace(n_kv_heads=config.n_heads)  # T5: no grouped K/V
        else:
            self.hf_name = "hf-llama"
            self.cost_config = config.replace(mlp_type="swiglu", mlp_dim=hf_llama_intermediate(config))
        self.label = f"{self.hf_name} ({mirror})"

    def build(self) -> Any:
        from transformers import LlamaForCausalLM, T5ForConditionalGeneration

        encdec = self.arch == "encdec"
        cls = T5ForConditionalGeneration if encdec else LlamaForCausalLM
        hf_config = hf_t5_config(self.config) if encdec else hf_llama_config(self.config)
        torch.manual_seed(self.seed)
        with torch.device(self.device):
            model = cls(hf_config)
        return model.to(dtype=self.dtype).eval()

    def timed_generate(self, model: Any, ids: torch.Tensor, n: int) -> Timing:
        from transformers import GenerationConfig
        from transformers.generation.streamers import BaseStreamer

        c = self.config
        gen = GenerationConfig(
            max_new_tokens=n,
            min_new_tokens=n,  # EOS is suppressed until n tokens: exactly n, as our eos_token_id=None
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=c.pad_token_id,
            eos_token_id=c.eos_token_id,
            decoder_start_token_id=c.bos_token_id,
        )
        clock = type("TokenClock", (_TokenClock, BaseStreamer), {})()
        mask = torch.ones_like(ids)
        _sync(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, generation_config=gen, streamer=clock)
        _sync(self.device)
        t_end = time.perf_counter()
        tokens = clock.times[1:]  # times[0]: the prompt / start token
        intervals = [b - a for a, b in zip(tokens, tokens[1:])]
        return Timing(t0, tokens[0] if tokens else t_end, tokens[-1] if tokens else t_end, len(tokens), intervals)

    def kv_cache_bytes(self, model: Any, batch: int, input_len: int, output_len: int) -> int:
        # HF grows its cache step by step; at the end it holds what the cost model counts
        return kv_cache_bytes(self.cost_config, batch, input_len, output_len, dtype_bytes(self.dtype))


BACKENDS: dict[str, type] = {"encore": EncoreBackend, "hf": HFBackend}


def make_backend(spec: BackendSpec) -> Backend:
    """Cheap: resolves the config; the weights are built only by `Backend.build`."""
    if spec.kind not in BACKENDS:
        raise ValueError(f"unknown bench backend {spec.kind!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[spec.kind](spec)
