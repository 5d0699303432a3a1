"""What `encore bench` measures: the configuration, and the points (input length x batch) it plans."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from encore.bench.costmodel import dtype_bytes
from encore.infer.optimize import PREFILL_PRODUCTS

# The paper's headline (arXiv 2501.16273, 330M models): the encoder-decoder's first-token latency is
# 47% lower and its throughput 4.7x higher than the decoder-only model's.
PAPER = {"first_token_latency_reduction": 0.47, "throughput_ratio": 4.7}
SWEEP_CPU = (128, 256, 512, 1024, 2048)
SWEEP_CUDA = (128, 256, 512, 1024, 2048, 4096, 8192)
METRICS = ("first_token_latency_s", "decode_tokens_per_s", "throughput_tokens_per_s")


@dataclass
class BenchConfig:
    """What to measure. `sweep=None` means the device's default input-length sweep, `()` none."""

    model: str = "encdec-330m"  # a preset name, a config .json, or a checkpoint directory
    baseline: str | None = "deconly-330m"  # None: measure `model` alone
    input_lens: tuple[int, ...] = (512,)  # full points: `output_len` tokens, `repeats` repetitions
    output_len: int = 128
    batch_sizes: tuple[int, ...] = (1,)  # concurrent requests, through encore.Engine (anchors: one static batch)
    device: str = "cpu"
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    repeats: int = 3
    warmup: int = 1
    # quick points (time to first token + a short decode) at these input lengths, first batch size only
    sweep: tuple[int, ...] | None = None
    sweep_output_len: int = 16
    sweep_repeats: int = 3
    vs_hf: bool = False  # also time the same shapes built with Hugging Face transformers
    vs_ct2: bool = False  # also time CTranslate2 running a T5 of the encoder-decoder's shape (fp32 / int8)
    vs_llamacpp: bool = False  # also time llama.cpp on the decoder-only model's own weights (F32 / Q8_0 / Q4_0)
    onnx: bool = False  # also time the models exported to ONNX, run by onnxruntime (at each quantization)
    quantize: tuple[str | None, ...] = (None,)  # encore models at each: None (the dtype), "int8", "int4"
    json_path: str | None = "bench.json"
    plot_path: str | None = "bench.png"
    peak_flops: float | None = None  # FLOP/s for the cost model; None: probe it
    mem_bandwidth: float | None = None  # bytes/s for the cost model; None: probe it
    threads: int | None = None  # torch.set_num_threads; None: leave torch's default
    cpu_linear: str | None = None  # encore's fp32 CPU kernel, "onednn" | "aten" (F.linear); None: the fastest
    seed: int = 0
    num_beams: int = 1  # > 1: every backend runs beam search of this width (CTranslate2's beam_size)
    prefill_products: str = "auto"  # encore int8 models: a prefill's products as "bf16" or "int8" (encore.optimize)
    kv_cache_dtype: str = "auto"  # encore models: "auto", "fp32" or "fp16" K/V (encore.optimize(kv_dtype=...))
    profile_prefill: bool = False  # also split one prefill of each encore model into parts (prefill_profile)
    progress: bool | None = None  # None: a progress bar on a terminal, none under CI / ENCORE_QUIET
    report: bool = True  # print the tables
    isolate: bool = True  # each model in a worker process of its own (False: all in this process)
    retain_memory: bool = True  # workers keep freed memory for reuse (encore.infer.memory), as a deployment would

    def resolved_dtype(self) -> str:
        return self.dtype or ("bfloat16" if self.device == "cuda" else "float32")

    def resolved_sweep(self) -> tuple[int, ...]:
        if self.sweep is not None:
            return tuple(self.sweep)
        return SWEEP_CUDA if self.device == "cuda" else SWEEP_CPU

    def validate(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"BenchConfig.{name}: {why} (got {getattr(self, name)!r})")

        if self.device not in ("cpu", "cuda"):
            fail("device", "must be 'cpu' or 'cuda'")
        if self.device == "cuda" and not torch.cuda.is_available():
            fail("device", "CUDA is not available in this torch build / on this machine")
        dtype_bytes(self.resolved_dtype())  # raises on an unknown dtype
        for name in ("input_lens", "batch_sizes"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                fail(name, "must be one or more positive integers")
        if self.sweep and any(not isinstance(v, int) or v < 1 for v in self.sweep):
            fail("sweep", "input lengths must be positive integers")
        for name in ("output_len", "sweep_output_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 2:
                fail(name, "must be an integer >= 2 (the decode rate needs a first and a last token)")
        for name, low in (("repeats", 1), ("sweep_repeats", 1), ("warmup", 0)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                fail(name, f"must be an integer >= {low}")
        if self.threads is not None and self.threads < 1:
            fail("threads", "must be >= 1")
        if isinstance(self.num_beams, bool) or not isinstance(self.num_beams, int) or self.num_beams < 1:
            fail("num_beams", "must be an integer >= 1")
        if self.prefill_products not in PREFILL_PRODUCTS:
            fail("prefill_products", f"must be one of {PREFILL_PRODUCTS}")
        if self.kv_cache_dtype not in ("auto", "fp32", "fp16"):
            fail("kv_cache_dtype", "must be 'auto', 'fp32' or 'fp16'")
        if self.num_beams > 1 and (self.onnx or self.vs_llamacpp):
            fail("num_beams", "beam search is timed for encore, --vs-ct2 and --vs-hf (not ONNX or llama.cpp)")
        if self.cpu_linear is not None and self.cpu_linear not in ("onednn", "aten"):
            fail("cpu_linear", "must be None, 'onednn' or 'aten'")
        if not self.quantize or any(q not in (None, "int8", "int4") for q in self.quantize):
            fail("quantize", "must be one or more of None (no quantization), 'int8' and 'int4'")
        if any(self.quantize) and self.device != "cpu":
            fail("quantize", "int8 / int4 are CPU paths; on CUDA the models run in bf16")
        if self.vs_ct2 and self.device != "cpu":
            fail("vs_ct2", "the CTranslate2 anchor runs on the CPU")
        if self.vs_llamacpp and self.device != "cpu":
            fail("vs_llamacpp", "the llama.cpp anchor runs on the CPU")
        if self.onnx and (self.device != "cpu" or self.resolved_dtype() != "float32"):
            fail("onnx", "the ONNX backend exports float32 models and runs them on the CPU provider")
        for name in ("peak_flops", "mem_bandwidth"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                fail(name, "must be positive")


@dataclass
class Point:
    input_len: int
    batch_size: int
    output_len: int
    repeats: int
    warmup: int
    kind: str  # "full" | "sweep"


def plan_points(cfg: BenchConfig) -> list[Point]:
    points = [
        Point(s, b, cfg.output_len, cfg.repeats, cfg.warmup, "full") for b in cfg.batch_sizes for s in cfg.input_lens
    ]
    full = {(p.input_len, p.batch_size) for p in points}
    b0 = cfg.batch_sizes[0]
    for s in sorted(set(cfg.resolved_sweep())):
        if (s, b0) not in full:
            # no warm-up: the model is warm from the full points; the first repetition pays new shapes
            points.append(Point(s, b0, cfg.sweep_output_len, cfg.sweep_repeats, 0, "sweep"))
    return points
