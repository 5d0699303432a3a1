"""What the bench can time: one `Backend` per way of running a model, all behind one interface.

A `BackendSpec` is a picklable recipe (it crosses into a worker process); `encore.bench.registry`
turns it into a `Backend` there, which builds the model and generates with timestamps. Results carry
the backend's `name`; an *anchor* (another library running a model of the same shape: Hugging Face,
CTranslate2, in `encore.bench.anchors`) names the encore model it copies (`mirror`) and is compared
with it.

encore's own backend times requests through `encore.Engine` (the serving path): a point of batch
size B is B concurrent requests, added at once, admitted together, decoded together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from encore.bench.machine import roofline_kernel
from encore.config import ModelConfig
from encore.convert import load, resolve_model
from encore.infer.engine import Engine
from encore.infer.memory import release_freed_memory
from encore.infer.optimize import DEFAULT_INT4_POLICY, kv_dtype_named, optimize
from encore.model.io import build, spec_label
from encore.model.kernels import bytes_per_weight


@dataclass
class Timing:
    """One request's clock readings (perf_counter seconds) and the gaps between consecutive tokens."""

    t_call: float
    t_first: float | None  # None: the backend cannot tell (another library's beam search runs to its end)
    t_last: float
    tokens: int  # tokens yielded per row
    intervals: list[float]  # tokens - 1 gaps (seconds); on CUDA from events, without host syncs


@dataclass(frozen=True)
class BackendSpec:
    """A picklable recipe for one model to time; each worker process builds its own from it."""

    kind: str  # a key of encore.bench.registry.BACKENDS
    model: str  # encore: preset / config .json / checkpoint dir; anchors: the encore model whose shape they copy
    max_len: int  # longest input + output it will see (RoPE tables / positions must cover it)
    device: str
    dtype: str
    seed: int
    cpu_linear: str | None = None  # encore's fp32 CPU kernel ("onednn" | "aten"; None: the fastest)
    quantize: str | None = None  # "int8" / "int4": encore.optimize's weights (CTranslate2: compute_type, int8 only)
    retain_memory: bool = True  # the worker keeps freed memory for reuse (encore.infer.memory)
    num_beams: int = 1  # > 1: beam search, exactly n steps (no EOS), K hypotheses per request
    prefill_products: str = "auto"  # encore int8: a prefill's products as bf16 or int8 (encore.optimize)
    kv_cache_dtype: str = "auto"  # encore: the K/V cache's precision ("auto" | "fp32" | "fp16": optimize(kv_dtype=...))


class Backend(Protocol):
    label: str  # the model's name in the results
    name: str  # the backend's name in the results ("encore", "encore-int8", "transformers", ...)
    arch: str  # "encdec" | "deconly"
    cost_config: ModelConfig  # the shapes the cost model prices (for anchors: the equivalent encore shapes)
    mirror: str | None  # anchors: label of the encore model whose shape this one copies (compared with it)
    sweep: bool  # measured at the sweep lengths too
    kernel: str  # the matrix kernel its roofline is probed with ("aten" | "onednn" | "int8" | "int4")
    weight_bytes: float  # bytes per weight the cost model prices (encore.model.kernels.bytes_per_weight)

    def build(self) -> Any: ...
    def params(self, model: Any) -> int: ...
    def timed_generate(self, model: Any, ids: torch.Tensor, n: int, capacity: int) -> Timing: ...
    def kv_cache_bytes(self, model: Any, batch: int, input_len: int, output_len: int) -> int: ...


def sync(device: torch.device) -> None:
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


def quantized_label(label: str, quantize: str | None) -> str:
    return f"{label} {quantize}" if quantize else label


def decode_bytes_per_weight(config: ModelConfig, quantize: str | None, dtype: torch.dtype) -> float:
    """Bytes per weight a decode step reads, averaged over the decoder and the output head: int4's
    default policy keeps the head int8 (`infer.optimize.DEFAULT_INT4_POLICY`)."""
    layers = bytes_per_weight(quantize, dtype)
    if quantize != "int4":
        return layers
    head_kind = DEFAULT_INT4_POLICY.get("lm_head", "int4")
    decoder, head = config.param_counts()["decoder"], config.vocab_size * config.d_model
    return (decoder * layers + head * bytes_per_weight(head_kind, dtype)) / (decoder + head)


class EncoreBackend:
    """encore: a preset / config with random weights (seeded) or a checkpoint, made ready with
    `encore.optimize` (int8 when the spec says so), timed through `encore.Engine`."""

    sweep, mirror = True, None

    def __init__(self, spec: BackendSpec):
        self.device, self.dtype, self.seed = torch.device(spec.device), getattr(torch, spec.dtype), spec.seed
        label, self.cost_config, self.checkpoint = bench_config(spec.model, spec.max_len)
        self.quantize, self.linear = spec.quantize, spec.cpu_linear or "auto"
        self.label = quantized_label(label, spec.quantize)
        self.name = "encore" + (f"-{spec.quantize}" if spec.quantize else "")
        self.arch = self.cost_config.arch
        self.kernel = roofline_kernel(self.device, self.dtype, spec.quantize, self.linear)
        self.weight_bytes = decode_bytes_per_weight(self.cost_config, spec.quantize, self.dtype)
        self._engine: tuple[tuple[int, int, int], Engine] | None = None
        self.num_beams = spec.num_beams
        if self.num_beams > 1:
            self.name += f"-beam{self.num_beams}"
        self.prefill_products, self.kv_cache_dtype = spec.prefill_products, spec.kv_cache_dtype
        if spec.kv_cache_dtype != "auto":
            self.name += f"-kv{spec.kv_cache_dtype[2:]}"
            self.label += f", {spec.kv_cache_dtype} K/V"
        if spec.prefill_products == "int8" and spec.quantize == "int8":
            self.kernel = "int8rows"  # its prefill's products: probed through the same path
            self.name += "-int8prefill"
            self.label += ", int8 prefill"

    def build(self) -> Any:
        if self.checkpoint is not None:
            max_len = self.cost_config.max_seq_len
            model = load(self.checkpoint, device=self.device, dtype=self.dtype, max_seq_len=max_len)
        else:
            deferred = self.quantize is not None and torch.device(self.device).type == "cpu"  # 10B int4 in 24 GB
            model = build(self.cost_config, seed=self.seed, device=self.device, deferred=deferred)
        model = optimize(
            model,
            self.device,
            self.dtype,
            quantize=self.quantize,
            linear=self.linear,
            keep_originals=False,
            prefill_products=self.prefill_products,
            kv_dtype=kv_dtype_named(self.kv_cache_dtype),
        )
        release_freed_memory()  # the fp32 weights a model quantized here no longer holds
        return model

    def params(self, model: Any) -> int:
        return model.config.param_counts()["total"]

    def engine(self, model: Any, batch: int, input_len: int, output_len: int) -> Engine:
        """The engine for a point, sized exactly for it (built once, kept until the next point)."""
        key = (batch, input_len, output_len)
        if self._engine is None or self._engine[0] != key:
            self._engine = None  # free the previous cache first
            slots = batch * self.num_beams  # a beam request holds num_beams slots
            self._engine = (key, Engine(model, max_batch=slots, max_input_len=input_len, max_new_tokens=output_len))
        return self._engine[1]

    def timed_generate(self, model: Any, ids: torch.Tensor, n: int, capacity: int) -> Timing:
        """`ids` [B, S]: B concurrent requests of n tokens each, in an engine sized for `capacity`
        tokens. First token: when `admit` has returned every request's first token (beam search: its
        first step, the prefill's candidates scored). A mark per step: one token per row (hypothesis)."""
        engine = self.engine(model, ids.shape[0], ids.shape[1], capacity)
        marks = []
        sync(self.device)
        t0 = time.perf_counter()
        for row in ids.tolist():
            engine.add(row, max_new_tokens=n, eos_token_id=None, num_beams=self.num_beams)
        engine.admit()
        marks.append(time.perf_counter())  # events are read on the host: the device is done
        while engine.has_work():
            engine.decode()
            marks.append(time.perf_counter())
        intervals = [b - a for a, b in zip(marks, marks[1:])]
        return Timing(t0, marks[0], marks[-1], len(marks), intervals)

    def kv_cache_bytes(self, model: Any, batch: int, input_len: int, output_len: int) -> int:
        return self.engine(model, batch, input_len, output_len).cache.nbytes


def cached_onnx_export(source: str, seed: int, quantize: str | None, model: Any) -> Path:
    """The ONNX export of the model `source` names (a checkpoint's path, or a config's JSON with its
    random weights' `seed`) under $ENCORE_CACHE/bench, made once: fp32 from `model()`, a quantization
    ("int8", "int4") from the fp32 export."""
    import hashlib
    import json

    from encore.export import export_onnx, quantize_onnx
    from encore.export.onnx import REVISION
    from encore.files import cache_dir
    from encore.onnx import MANIFEST

    key = hashlib.sha256(json.dumps([source, seed, quantize, torch.__version__, REVISION]).encode())
    directory = cache_dir() / "bench" / f"onnx-{key.hexdigest()[:12]}"
    if (directory / MANIFEST).is_file():
        return directory
    if quantize:
        quantize_onnx(cached_onnx_export(source, seed, None, model), directory, quantize)
    else:
        export_onnx(model(), directory)
    return directory


class OnnxBackend:
    """encore's model exported to ONNX (`encore export`: fp32, or int8 dynamic) and generated by
    `encore.onnx.OnnxGenerator` (onnxruntime's CPU provider): the deployment path without torch.
    The export is cached under $ENCORE_CACHE/bench."""

    sweep = False

    def __init__(self, spec: BackendSpec):
        label, self.cost_config, self.checkpoint = bench_config(spec.model, spec.max_len)
        self.arch, self.seed, self.quantize = self.cost_config.arch, spec.seed, spec.quantize
        self.mirror = quantized_label(label, spec.quantize)
        self.label = f"onnx {spec.quantize or 'fp32'} ({label})"
        self.name = "onnxruntime" + (f"-{spec.quantize}" if spec.quantize else "")
        self.kernel = roofline_kernel("cpu", torch.float32, spec.quantize)
        self.weight_bytes = decode_bytes_per_weight(self.cost_config, spec.quantize, torch.float32)
        if spec.device != "cpu" or spec.dtype != "float32":
            raise ValueError("the ONNX backend exports a float32 model and runs it on the CPU provider")
        if spec.num_beams > 1:
            raise ValueError("--num-beams times encore, --vs-ct2 and --vs-hf: not --backend onnx")

    def build(self) -> Any:
        from encore.onnx import OnnxGenerator

        return OnnxGenerator(self.export(self.quantize), threads=torch.get_num_threads())

    def export(self, quantize: str | None) -> Path:
        """The cached export of this model: fp32 from the model, a quantization from the fp32 export."""
        source = str(self.checkpoint.resolve()) if self.checkpoint else self.cost_config.to_json()

        def model() -> Any:
            if self.checkpoint is not None:
                return load(self.checkpoint, max_seq_len=self.cost_config.max_seq_len)
            return build(self.cost_config, seed=self.seed)

        return cached_onnx_export(source, self.seed, quantize, model)

    def params(self, model: Any) -> int:
        return self.cost_config.param_counts()["total"]

    def timed_generate(self, model: Any, ids: torch.Tensor, n: int, capacity: int) -> Timing:
        marks = []
        t0 = time.perf_counter()
        for _ in model.generate_stream(ids.numpy(), max_new_tokens=n, eos_token_id=None):
            marks.append(time.perf_counter())
        intervals = [b - a for a, b in zip(marks, marks[1:])]
        return Timing(t0, marks[0], marks[-1], len(marks), intervals)

    def kv_cache_bytes(self, model: Any, batch: int, input_len: int, output_len: int) -> int:
        from encore.bench.costmodel import kv_cache_bytes

        return kv_cache_bytes(self.cost_config, batch, input_len, output_len, 4)
