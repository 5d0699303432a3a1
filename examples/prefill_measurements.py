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
    python examples/prefill_measurements.py compare REV [PRESET] [QUANTIZE]  # whole prefills with csrc/rows.c
        # (the many-row products) as built at git revision REV against the working tree's, swapped in one
        # process, 20 rounds alternating which goes first: each build's median, the median of the
        # per-round ratios (what a noisy VM leaves steadiest), per-projection medians, and whether the
        # logits are the same bits
    python examples/prefill_measurements.py vnni       # int8 rows (a prefill's, quantized per row) at 128 / 512
                                                       # rows: csrc/int8.c (VNNI's packed rows, or AMX's int8
                                                       # tiles) against fbgemm's packed GEMM, per projection
    python examples/prefill_measurements.py fbgemm [PRESET]  # whole prefills with int8 rows
        # (`prefill_products="int8"`, what a CPU without AVX512-BF16 runs): each int8 weight as csrc/int8.c's
        # rows alone against the fbgemm packed copy it replaced, two models in one process, 15 rounds
        # alternating which goes first; the logits' largest difference and top-1 agreement

Each variant is timed interleaved with the one it replaces, in one process; medians.
"""

from __future__ import annotations

import copy
import functools
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _encore import median_ms


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


def _rows_at(rev: str):
    """csrc/ at git revision `rev`, built as encore builds csrc/rows.c (a ctypes library)."""
    import ctypes
    import subprocess
    import tempfile
    from pathlib import Path

    from encore.model.native import CSRC, FLAGS, compiler

    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
    relative = CSRC.relative_to(Path(root.stdout.strip()))
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:{relative}"], capture_output=True, text=True)
    if names.returncode:
        sys.exit(f"compare: no {relative} at git revision {rev!r}: {names.stderr.strip()}")
    folder = Path(tempfile.mkdtemp(prefix="encore-rows-"))
    for name in names.stdout.split():
        shown = subprocess.run(["git", "show", f"{rev}:{relative}/{name}"], capture_output=True, check=True)
        (folder / name).write_bytes(shown.stdout)
    subprocess.run([compiler(), *FLAGS, "-o", str(folder / "rows.so"), str(folder / "rows.c"), "-lm"], check=True)
    return ctypes.CDLL(str(folder / "rows.so"))


def compare(rev: str = "HEAD", preset: str = "encdec-330m", quantize: str = "int8") -> None:
    import encore
    from encore.bench.backends import bench_config
    from encore.infer.memory import release_freed_memory, retain_freed_memory
    from encore.model import kernels
    from encore.model.io import build

    retain_freed_memory()  # as the bench and the server run: freed activations stay mapped
    model = encore.optimize(build(bench_config(preset, 600)[1], seed=0, deferred=True), quantize=quantize)
    release_freed_memory()
    current, builds = kernels._rows_library(), {"before": _rows_at(rev)}
    calls: dict[str, dict[tuple, list[float]]] = {"before": {}, "now": {}}

    def timed(fn, which: str):
        def call(*args):
            start = time.perf_counter()
            status = fn(*args)
            key = (*args[2:5], args[1] is not None, args[-1] is not None)  # M, K, N, packed in, packed out
            calls[which].setdefault(key, []).append(time.perf_counter() - start)
            return status

        return call

    names = ("encore_int8_linear_amx_bf16", "encore_int4_linear_amx_bf16")
    fns = {"now": {n: timed(getattr(current, n), "now") for n in names}, "before": {}}
    for n in names:
        fn, like = getattr(builds["before"], n), getattr(current, n)
        fn.argtypes, fn.restype = like.argtypes, like.restype
        fns["before"][n] = timed(fn, "before")
    originals = {n: getattr(current, n) for n in names}

    def use(which: str) -> None:
        for n in names:
            setattr(current, n, fns[which][n])

    try:
        with torch.inference_mode():
            for tokens in (128, 512):
                ids = torch.randint(5, 1000, (1, tokens), generator=torch.Generator().manual_seed(0))
                logits = {}
                for which in ("before", "now"):
                    use(which)
                    logits[which] = model.prefill(ids, None, 1)[0]
                times: dict[str, list[float]] = {"before": [], "now": []}
                calls["before"].clear(), calls["now"].clear()
                for r in range(20):
                    for which in ("before", "now") if r % 2 == 0 else ("now", "before"):
                        use(which)
                        start = time.perf_counter()
                        model.prefill(ids, None, 1)
                        times[which].append(time.perf_counter() - start)
                b, n = (statistics.median(times[w]) * 1e3 for w in ("before", "now"))
                pairs = statistics.median(now / before for before, now in zip(times["before"], times["now"]))
                same = torch.equal(logits["before"], logits["now"])
                print(f"{preset} {quantize} {tokens} tokens: {rev} {b:.1f} ms, now {n:.1f} ms "
                      f"(per-round ratio {pairs:.3f}); logits the same bits: {same}")  # fmt: skip
                for shape in sorted(calls["now"]):
                    was, now = (statistics.median(calls[w][shape]) * 1e3 for w in ("before", "now"))
                    m, k, n_out, packed_in, packed_out = shape
                    packed = " (rows packed in)" if packed_in else " (packed out)" if packed_out else ""
                    print(f"  {m} x {k} -> {n_out}{packed}: {was:.3f} -> {now:.3f} ms")
    finally:
        for n in names:
            setattr(current, n, originals[n])


def _int8_rows_models(preset: str):
    """(fbgemm, csrc) `preset` int8 models whose many rows are int8 rows: one holding fbgemm's packed
    copies (what ran before csrc/int8.c's many-row VNNI products), one csrc/int8.c's rows alone."""
    import encore
    import encore.infer.optimize as optimize_module
    from encore.bench.backends import bench_config
    from encore.infer.memory import release_freed_memory
    from encore.model import kernels
    from encore.model.io import build

    config = bench_config(preset, 600)[1]
    made = []
    for rows_only in (False, True):
        saved = (optimize_module.rows_only_available, kernels.rows_only_available)
        if not rows_only:
            optimize_module.rows_only_available = kernels.rows_only_available = lambda: False
        try:
            made.append(encore.optimize(build(config, seed=0, deferred=True), quantize="int8", prefill_products="int8"))
        finally:
            optimize_module.rows_only_available, kernels.rows_only_available = saved
        release_freed_memory()
    return made


def vnni() -> None:
    from encore.model.kernels import Int8Linear, rows_only_available

    if not rows_only_available():
        sys.exit("csrc/int8.c's many-row products need AVX-512 VNNI (and a C compiler)")
    g = torch.Generator().manual_seed(0)
    for out_features, in_features in ((768, 1024), (1024, 384), (4096, 1024), (1024, 4096)):  # encdec-330m's
        weight = torch.randn(out_features, in_features, generator=g) * 0.02
        layers = {"fbgemm": Int8Linear(weight), "csrc": Int8Linear(weight, rows_only=True)}
        for layer in layers.values():
            layer.bf16_many_rows = False  # int8 rows, quantized per row, in both
        for rows in (128, 512):
            x = torch.randn(rows, in_features, generator=g)
            with torch.inference_mode():
                ms = median_ms({name: lambda layer=layer, x=x: layer(x) for name, layer in layers.items()}, rounds=25)
            rate, ratio = 2 * rows * in_features * out_features / ms["csrc"] / 1e6, ms["csrc"] / ms["fbgemm"]
            print(f"{rows} x {in_features} -> {out_features}: fbgemm {ms['fbgemm']:.3f} ms, csrc/int8.c "
                  f"{ms['csrc']:.3f} ms ({rate:.0f} GOP/s, {ratio:.2f}x)")  # fmt: skip


def fbgemm(preset: str = "encdec-330m") -> None:
    models = dict(zip(("fbgemm", "csrc"), _int8_rows_models(preset)))
    with torch.inference_mode():
        for tokens in (128, 512):
            ids = torch.randint(5, 1000, (1, tokens), generator=torch.Generator().manual_seed(0))
            logits = {name: model.prefill(ids, None, 1)[0] for name, model in models.items()}
            times: dict[str, list[float]] = {name: [] for name in models}
            for r in range(15):
                for name in ("fbgemm", "csrc") if r % 2 == 0 else ("csrc", "fbgemm"):
                    start = time.perf_counter()
                    models[name].prefill(ids, None, 1)
                    times[name].append(time.perf_counter() - start)
            ratio = statistics.median(c / f for f, c in zip(times["fbgemm"], times["csrc"]))
            a, b = logits["fbgemm"], logits["csrc"]
            agree, apart = (a.argmax(-1) == b.argmax(-1)).float().mean().item(), (a - b).abs().max().item()
            f, c = (statistics.median(times[name]) * 1e3 for name in ("fbgemm", "csrc"))
            print(f"{preset} int8 rows, {tokens} tokens: fbgemm {f:.1f} ms, csrc/int8.c {c:.1f} ms (per-round "
                  f"ratio {ratio:.3f}); logits differ by at most {apart:.2e}, top-1 the same: {agree:.0%}")  # fmt: skip


if __name__ == "__main__":
    torch.set_num_threads(2)
    commands = {"attention": attention, "int4": int4, "rows": rows, "fp32": fp32, "amx": amx, "prefill": prefill}
    commands |= {"compare": compare, "vnni": vnni, "fbgemm": fbgemm}
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in commands:
        sys.exit(f"usage: python examples/prefill_measurements.py {'|'.join(commands)} [PRESET] [QUANTIZE]")
    commands[what](*sys.argv[2:5])
