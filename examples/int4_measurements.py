"""The measurements behind docs/engine.md's int4 section.

    python examples/int4_measurements.py kernels      # one projection at one row: every int4 option beside int8
    python examples/int4_measurements.py checkpoint   # encdec-330m on disk and load time: fp32, int8, int4

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


if __name__ == "__main__":
    torch.set_num_threads(2)
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in ("kernels", "checkpoint"):
        sys.exit("usage: python examples/int4_measurements.py kernels|checkpoint")
    kernels() if what == "kernels" else checkpoint()
