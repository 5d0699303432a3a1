"""llama.cpp as an anchor (`encore bench --vs-llamacpp`): the engine most people run small models
with on a CPU, timed on *the same weights* encore runs.

The decoder-only model (a Llama-family preset with its seeded random weights, or a checkpoint) is
written as an F32 GGUF (`encore.convert.gguf.save_gguf`), then quantized by llama.cpp's own quantizer
as `llama-quantize` would: int8 -> Q8_0, int4 -> Q4_0 (its default per-tensor choices: a Q4_0
model's head is Q6_K, or Q8_0 when its width is no multiple of 256). Files are cached under
$ENCORE_CACHE/bench.

It is timed through llama.cpp's C API (llama-cpp-python's ctypes bindings, no Python sampling
loop of theirs): one `llama_decode` of the prompt in batches of 512, then one `llama_decode` per
token, a greedy sampler, exactly n tokens. Batch 1 only (the bench skips it at larger batches).

llama.cpp does not run encore's encoder-decoders (its T5 path is outside this API), so the
comparisons are engine against engine (encore's decoder-only model vs llama.cpp on the same
weights) and the user's choice (encore's encoder-decoder vs llama.cpp running the decoder-only
model of the same size). Needs `pip install 'encore[llamacpp]'` (builds llama.cpp, ~4 minutes).
"""

from __future__ import annotations

import collections
import ctypes
import time
from pathlib import Path
from typing import Any

import torch

from encore.bench.backends import BackendSpec, Timing, bench_config, quantized_label
from encore.bench.costmodel import kv_cache_bytes
from encore.bench.machine import roofline_kernel
from encore.bench.same_weights import cached_directory
from encore.config import ModelConfig
from encore.convert.gguf import why_not_llama
from encore.lazy import require

# encore's quantization -> llama.cpp's file type (llama_ftype)
FILE_TYPES = {None: ("F32", 0), "int8": ("Q8_0", 7), "int4": ("Q4_0", 2)}


_LOG: collections.deque[str] = collections.deque(maxlen=20)  # llama.cpp's last log lines
_log_callback = None  # the ctypes callback that fills it, kept alive here


def _llama_cpp():
    """The bindings, with llama.cpp's log kept in `_LOG` instead of printed (its load-time chatter
    would bury the bench's tables); errors quote the last lines."""
    llama_cpp = require("llama_cpp", "llamacpp")
    global _log_callback
    if _log_callback is None:

        def keep(level: int, text: bytes, user_data: Any) -> None:
            _LOG.append(text.decode("utf-8", "replace").rstrip())

        _log_callback = llama_cpp.llama_log_callback(keep)  # held here: ctypes must not free it
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    return llama_cpp


def _failure(what: str) -> RuntimeError:
    errors = [line for line in _LOG if "error" in line.lower() or "fail" in line.lower()]
    return RuntimeError(f"{what}: {errors[-1] if errors else 'no reason logged'}")


def gguf_file(config: ModelConfig, seed: int, checkpoint: Path | None, quantize: str | None) -> Path:
    """The model as a GGUF file of `quantize`'s llama.cpp type, cached (F32 written once, quantized
    by llama.cpp's own quantizer)."""
    from encore.convert import load
    from encore.convert.gguf import save_gguf
    from encore.model.io import build

    key = [config.to_json_dict(), seed, str(checkpoint), checkpoint and checkpoint.stat().st_mtime]

    def write_f32(work: Path) -> None:
        work.mkdir(parents=True)
        model = build(config, seed=seed) if checkpoint is None else load(checkpoint)
        save_gguf(model, work / "model-F32.gguf")

    f32 = cached_directory("gguf", key, write_f32) / "model-F32.gguf"
    qtype, ftype = FILE_TYPES[quantize]
    if quantize is None:
        return f32

    def quantize_file(work: Path) -> None:
        llama_cpp = _llama_cpp()
        work.mkdir(parents=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread = ftype, torch.get_num_threads()
        out = work / f"model-{qtype}.gguf"
        if llama_cpp.llama_model_quantize(str(f32).encode(), str(out).encode(), ctypes.byref(params)) != 0:
            raise _failure(f"llama.cpp could not quantize {f32} to {qtype}")

    return cached_directory(f"gguf-{qtype}", [str(f32)], quantize_file) / f"model-{qtype}.gguf"


def gguf_bytes_per_weight(path: Path) -> float:
    """Bytes per weight a decode step reads: the file's matrices (layers and head; a tied model's
    embedding is its head), from the types llama.cpp's quantizer chose."""
    gguf = require("gguf", "gguf")
    tensors = gguf.GGUFReader(str(path)).tensors
    matrices = [t for t in tensors if len(t.shape) == 2]
    has_head = any(t.name == "output.weight" for t in matrices)
    read = [t for t in matrices if t.name != "token_embd.weight" or not has_head]
    return sum(int(t.n_bytes) for t in read) / sum(int(t.n_elements) for t in read)


# bytes per weight of llama.cpp's block types: Q8_0 and Q4_0 blocks of 32 with an fp16 scale; Q6_K
# super-blocks of 256 (210 bytes)
TYPE_BYTES = {"F32": 4.0, "F16": 2.0, "Q8_0": 34 / 32, "Q4_0": 18 / 32, "Q6_K": 210 / 256}


def decode_bytes_per_weight(config: ModelConfig, qtype: str) -> float:
    """What `gguf_bytes_per_weight` finds in the file llama.cpp's quantizer writes, from the config:
    under Q4_0 its default gives the head (a tied model's embedding) Q6_K, or Q8_0 where rows do not
    divide into Q6_K's blocks of 256 (SmolLM2's 576 and 960). Tested against the files."""
    head_type = qtype if qtype != "Q4_0" else "Q6_K" if config.d_model % 256 == 0 else "Q8_0"
    layers, head = config.param_counts()["decoder"], config.vocab_size * config.d_model
    return (layers * TYPE_BYTES[qtype] + head * TYPE_BYTES[head_type]) / (layers + head)


class LlamaCpp:
    """One llama.cpp model and context, greedy generation through its C API."""

    def __init__(self, path: Path, n_ctx: int, threads: int):
        self.lib = lib = _llama_cpp()
        self.ctx = self.model = None
        lib.llama_backend_init()
        model_params = lib.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self.model = lib.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise _failure(f"llama.cpp could not load {path}")
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, 512, 512, 1
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise _failure(f"llama.cpp could not make a context of {n_ctx} tokens for {path}")
        self.n_ctx = n_ctx
        self.sampler = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        lib.llama_sampler_chain_add(self.sampler, lib.llama_sampler_init_greedy())

    def _decode(self, tokens: list[int]) -> None:
        array = (self.lib.llama_token * len(tokens))(*tokens)
        if self.lib.llama_decode(self.ctx, self.lib.llama_batch_get_one(array, len(tokens))) != 0:
            raise RuntimeError(f"llama_decode failed on {len(tokens)} tokens")

    def generate(self, prompt: list[int], n: int, clock: list[float] | None = None) -> list[int]:
        """Greedy: exactly `n` new tokens after `prompt` (EOS does not stop it). `clock` gets a
        perf_counter reading as each token is known."""
        if len(prompt) + n > self.n_ctx:
            raise ValueError(f"{len(prompt)} prompt + {n} new tokens exceed the context of {self.n_ctx}")
        lib = self.lib
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        lib.llama_sampler_reset(self.sampler)
        for start in range(0, len(prompt), 512):
            self._decode(prompt[start : start + 512])
        out: list[int] = []
        while True:
            token = lib.llama_sampler_sample(self.sampler, self.ctx, -1)
            out.append(token)
            if clock is not None:
                clock.append(time.perf_counter())
            if len(out) == n:
                return out
            self._decode([token])

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_sampler_free(self.sampler)
            self.lib.llama_free(self.ctx)
        if self.model:
            self.lib.llama_model_free(self.model)
        self.ctx = self.model = None

    def __del__(self) -> None:
        self.close()


class LlamaCppBackend:
    """llama.cpp running the decoder-only model's own weights: F32, Q8_0 (int8) or Q4_0 (int4)."""

    sweep, name = False, "llama.cpp"
    max_batch = 1  # the runner skips it at larger batches
    rival = True  # compared with --model too, when it mirrors the baseline (runner._comparisons)

    def __init__(self, spec: BackendSpec):
        label, config, self.checkpoint = bench_config(spec.model, spec.max_len)
        if config.arch != "deconly":
            raise ValueError(f"--vs-llamacpp runs decoder-only models; {label} is an encoder-decoder")
        why = why_not_llama(config)
        if why:
            raise ValueError(f"--vs-llamacpp: llama.cpp's llama architecture cannot run {label}: {why}")
        if spec.device != "cpu":
            raise ValueError("--vs-llamacpp runs on the CPU")
        self.config = self.cost_config = config
        self.arch, self.seed, self.quantize, self.max_len = "deconly", spec.seed, spec.quantize, spec.max_len
        self.qtype = FILE_TYPES[spec.quantize][0]
        self.mirror = quantized_label(label, spec.quantize)
        self.label = f"llama.cpp {self.qtype} ({label})"
        self.name = "llama.cpp" + (f"-{self.qtype.lower()}" if spec.quantize else "")
        self.kernel = roofline_kernel("cpu", torch.float32, spec.quantize)
        self.weight_bytes = decode_bytes_per_weight(config, self.qtype)

    def build(self) -> Any:
        path = gguf_file(self.config, self.seed, self.checkpoint, self.quantize)
        return LlamaCpp(path, self.max_len, torch.get_num_threads())

    def params(self, model: Any) -> int:
        return int(model.lib.llama_model_n_params(model.model))

    def timed_generate(self, model: Any, ids: torch.Tensor, n: int, capacity: int) -> Timing:
        if ids.shape[0] != 1:
            raise ValueError(f"the llama.cpp anchor times batch 1 (got a batch of {ids.shape[0]})")
        marks: list[float] = []
        t0 = time.perf_counter()
        model.generate(ids[0].tolist(), n, clock=marks)
        intervals = [b - a for a, b in zip(marks, marks[1:])]
        return Timing(t0, marks[0], marks[-1], len(marks), intervals)

    def kv_cache_bytes(self, model: Any, batch: int, input_len: int, output_len: int) -> int:
        return kv_cache_bytes(self.cost_config, batch, input_len, output_len, 2)  # llama.cpp's cache is f16
