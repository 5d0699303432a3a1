"""The measurements behind docs/engine.md's "A prefill's attention with bf16 products", "fp32 in C" and
int4's bf16 prefill GEMMs (random weights of released shapes; 2 threads; run nothing else meanwhile).

    python examples/prefill_measurements.py attention  # one T5Gemma 2 encoder layer's attention: csrc/attend.c vs SDPA
    python examples/prefill_measurements.py int4       # int4 projections at 16-512 rows: AMX bf16 tiles in C vs
                                                       # bf16 weight + oneDNN's GEMM vs the int4 products
    python examples/prefill_measurements.py rows       # a T5Gemma 2 int8 prefill: int8's row scaling in C vs eager
    python examples/prefill_measurements.py fp32 [PRESET]  # fp32 decode step at 1 / 4 / 16 rows: a layer per C call
                                                           # vs module by module; the head: C vs oneDNN
    python examples/prefill_measurements.py amx        # int8 products at 32-1024 rows: AMX bf16 tiles in C vs
                                                       # the weight unpacked to bf16 + oneDNN's GEMM
    python examples/prefill_measurements.py prefill [PRESET] [QUANTIZE]  # a whole prefill of 128 / 512 tokens
        # (encdec-330m int8 by default), median of 7: run it from two checkouts in turn to compare commits

Each variant is timed interleaved with the one it replaces, in one process; medians.
"""

from __future__ import annotations

import copy
import functools
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def median_ms(fns: dict[str, Callable[[], object]], rounds: int = 15) -> dict[str, float]:
    """Milliseconds per call of each function, interleaved over `rounds` rounds after two warm-ups."""
    for fn in fns.values():
        fn(), fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def attention() -> None:
    from encore.model.fused import FusedAttend, bf16_attention_available

    if not bf16_attention_available():
        sys.exit("csrc/attend.c needs a CPU with AVX512-BF16 (and a C compiler)")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 512, 256, generator=g)  # T5Gemma 2 270M: 4 query heads x 256 over one K/V head
    k, v = torch.randn(1, 1, 512, 256, generator=g), torch.randn(1, 1, 512, 256, generator=g)
    fused = FusedAttend(bf16_prefill=True)
    with torch.inference_mode():
        for causal in (False, True):
            ms = median_ms({
                "sdpa": lambda c=causal: F.scaled_dot_product_attention(q, k, v, is_causal=c, enable_gqa=True),
                "bf16": lambda c=causal: fused(q, k, v, None, c, 0.0),
            })  # fmt: skip
            kind = "causal" if causal else "bidirectional"
            print(
                f"{kind}: SDPA {ms['sdpa']:.2f} ms, csrc/attend.c {ms['bf16']:.2f} ms ({ms['sdpa'] / ms['bf16']:.1f}x)"
            )


def int4() -> None:
    from encore.model.int4 import Int4Linear, bf16_many_rows, dequantize_int4

    if not bf16_many_rows():
        sys.exit("int4's bf16 prefill GEMMs need a CPU with AVX512-BF16 and oneDNN")
    g = torch.Generator().manual_seed(0)
    for n, k in ((2560, 960), (960, 2560)):  # SmolLM2-360M's MLP up (one half) and down
        layer = Int4Linear(torch.randn(n, k, generator=g) * 0.05)
        arms = {"bf16": copy.copy(layer), "int4": copy.copy(layer)}
        arms["bf16"]._amx = False  # the weight unpacked to bf16, then oneDNN's GEMM
        arms["int4"]._many = False  # the int4 x int8 products
        if layer._amx:  # csrc/rows.c: AMX's bf16 tiles, the weight unpacked a block at a time
            arms = {"amx": layer, **arms}
        levels = dequantize_int4(layer.qweight, layer.scales, layer.mins)
        with torch.inference_mode():
            for rows in (16, 32, 64, 128, 512):
                x = torch.randn(rows, k, generator=g)
                exact = x @ levels.T
                error = {name: ((m(x) - exact).norm() / exact.norm()).item() for name, m in arms.items()}
                ms = median_ms({name: lambda m=m, x=x: m(x) for name, m in arms.items()})
                said = ", ".join(f"{name} {ms[name]:.2f} ms (error {error[name]:.4f})" for name in arms)
                print(f"{n} x {k} at {rows} rows: {said}")


def rows() -> None:
    import encore
    from encore.config import ModelConfig
    from encore.infer.memory import retain_freed_memory
    from encore.model import kernels
    from encore.model.io import build

    retain_freed_memory()  # as the CLI and the bench do: no page faults of fresh allocations in the timing
    model = encore.optimize(build(ModelConfig.preset("t5gemma-2-270m-270m"), seed=0), quantize="int8")
    ids = torch.randint(5, 1000, (1, 512), generator=torch.Generator().manual_seed(0))
    lib = kernels._rows_library()

    def prefill(c: bool):
        kernels._rows_library = (lambda: lib) if c else (lambda: None)
        model.prefill(ids, None, 2)

    with torch.inference_mode():
        ms = median_ms({"c": lambda: prefill(True), "eager": lambda: prefill(False)}, rounds=10)
    print(f"t5gemma-2-270m-270m int8 prefill of 512 tokens: rows in C {ms['c']:.1f} ms, eager {ms['eager']:.1f} ms")


def fp32(preset: str = "t5gemma-2-270m-270m") -> None:
    import encore
    from encore.config import ModelConfig
    from encore.model.fused import FusedLinear
    from encore.model.io import build
    from encore.model.kernels import OneDNNLinear

    base = build(ModelConfig.preset(preset), seed=0)
    fused, modules = encore.optimize(copy.deepcopy(base)), encore.optimize(base)
    for layer in modules.decoder:  # the same kernels, each layer module by module
        if hasattr(layer, "_eager"):
            layer.forward = functools.partial(layer._eager.forward, layer)
    for batch in (1, 4, 16):
        ids = torch.randint(5, 1000, (batch, 128), generator=torch.Generator().manual_seed(0))
        steps = {}
        with torch.inference_mode():
            for name, model in (("fused", fused), ("modules", modules)):
                logits, cache = model.prefill(ids, None, 200)
                token = logits.argmax(-1)
                steps[name] = lambda model=model, cache=cache, token=token: model.decode_step(token, cache)
            ms = median_ms(steps, rounds=12)
        print(f"{preset} fp32 step at {batch} rows: a layer per C call {ms['fused']:.1f} ms, modules "
              f"{ms['modules']:.1f} ms ({ms['modules'] / ms['fused']:.2f}x)")  # fmt: skip
    head = fused.lm_head
    if isinstance(head, FusedLinear):
        onednn = OneDNNLinear(head.weight)
        x = torch.randn(1, 1, head.in_features)
        with torch.inference_mode():
            ms = median_ms({"c": lambda: head(x), "onednn": lambda: onednn(x)}, rounds=20)
        gb = head.weight.numel() * 4 / 1e9
        print(f"head {head.out_features} x {head.in_features}: C {gb / ms['c'] * 1e3:.1f} GB/s, oneDNN "
              f"{gb / ms['onednn'] * 1e3:.1f} GB/s ({ms['onednn'] / ms['c']:.2f}x)")  # fmt: skip


def amx() -> None:
    from encore.model.kernels import Int8Linear, _amx_bf16, int8_amx_bf16, int8_bf16_weight

    if not _amx_bf16():
        sys.exit("this CPU (or build) has no AMX bf16 tiles")

    def onednn(x, w, scales):
        return torch.ops.mkldnn._linear_pointwise(x.bfloat16(), int8_bf16_weight(w, scales), None, "none", [], "")

    for n, k in ((4096, 1024), (1024, 4096), (768, 1024), (32128, 1024)):
        w, scales = Int8Linear(torch.randn(n, k) * 0.02).rows()[:2]
        for m in (32, 128, 256, 512, 1024):
            x = torch.randn(m, k)
            fns = {
                "c": functools.partial(int8_amx_bf16, x, w, scales, None),
                "onednn": lambda x=x, w=w, scales=scales: onednn(x, w, scales).float(),
            }
            with torch.inference_mode():
                ms = median_ms(fns)
            print(f"{n} x {k}, {m} rows: C {ms['c']:.3f} ms, oneDNN {ms['onednn']:.3f} ms "
                  f"({ms['onednn'] / ms['c']:.2f}x)")  # fmt: skip


def prefill(preset: str = "encdec-330m", quantize: str = "int8") -> None:
    import encore
    from encore.bench.backends import bench_config
    from encore.infer.memory import release_freed_memory
    from encore.model.io import build

    config = bench_config(preset, 600)[1]
    model = encore.optimize(build(config, seed=0, deferred=True), quantize=quantize, keep_originals=False)
    release_freed_memory()
    said = []
    with torch.inference_mode():
        for tokens in (128, 512):
            ids = torch.randint(5, 1000, (1, tokens), generator=torch.Generator().manual_seed(0))
            ms = median_ms({"prefill": lambda ids=ids: model.prefill(ids, None, 1)}, rounds=7)
            said.append(f"{tokens} tokens {ms['prefill']:.1f} ms")
    print(f"{preset} {quantize} prefill: " + ", ".join(said))


if __name__ == "__main__":
    torch.set_num_threads(2)
    commands = {"attention": attention, "int4": int4, "rows": rows, "fp32": fp32, "amx": amx, "prefill": prefill}
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in commands:
        sys.exit(f"usage: python examples/prefill_measurements.py {'|'.join(commands)} [PRESET] [QUANTIZE]")
    commands[what](*sys.argv[2:4])
