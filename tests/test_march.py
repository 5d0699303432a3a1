"""The kernels built for another CPU than this one (`$ENCORE_MARCH`): x86-64-v3, a CPU with AVX2 and no
AVX-512 (AMD Zen 2 / 3), runs a decode step's int8 products (csrc/int8.c's AVX2 path: the VNNI path's
outputs, bit for bit, tests/test_int8_rows.py), int4's (csrc/int4.c's) and attention's loops 8 wide over
fp16 K/V in the fused decoder layer; the models' decode-step logits equal this machine's build's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from encore.model.fused import fused_available
from encore.model.native import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not fused_available() or " avx2" not in cpu_flags(), reason="needs a C compiler and an AVX2 CPU"
)

# a prompt, then teacher-forced tokens: every step's logits, through the optimized (fused) model
STEPS = """
import json, sys, torch, encore
sys.path.insert(0, {tests!r})
from conftest import make_model

def logits(arch, quantize):
    model = encore.optimize(make_model(arch), quantize=quantize)
    ids = torch.tensor([[5, 9, 14, 3, 77, 41, 8, 250, 17]])
    with torch.inference_mode():
        out, cache = model.prefill(ids, None, 8)
        steps = [out]
        for token in (11, 300, 42, 7, 199, 64):
            steps.append(model.decode_step(torch.tensor([token]), cache))
    return torch.cat(steps).tolist()

result = {{}}
for arch in ("encdec", "deconly"):
    for quantize in ("fp32", "int8", "int4"):
        result[f"{{arch}}-{{quantize}}"] = logits(arch, None if quantize == "fp32" else quantize)
from encore.model import int4, layer_c
lib = layer_c.library()
result["built"] = [lib.encore_int8_has_simd(), lib.encore_int8_has_vnni(), int4.int4_simd()]
print(json.dumps(result))
"""


@pytest.mark.slow
def test_an_avx2_build_decodes_as_this_machines_build():
    code = STEPS.format(tests=str(ROOT / "tests"))
    env = {**os.environ, "ENCORE_MARCH": "x86-64-v3", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    avx2 = json.loads(proc.stdout.strip().splitlines()[-1])
    assert avx2.pop("built") == [1, 0, "avx2"]  # the AVX2 products, not VNNI's
    here = json.loads(subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, "ENCORE_MARCH": ""}, timeout=600
    ).stdout.strip().splitlines()[-1])  # fmt: skip
    here.pop("built")
    for name, steps in avx2.items():
        got, expected = torch.tensor(steps), torch.tensor(here[name])
        # sums in other orders (attention 8 wide; fp32: the encoder's attention SDPA's, int8: the prefill's
        # products fbgemm's without VNNI): 1e-7 to 1.3e-4 of the logits' scale measured; int4 0.3-3%: its
        # activations rounded per group of 32 turn 1e-7 apart into a level apart (as test_fused's fp16 K/V)
        bound = (5e-2 if name.endswith("int4") else 1e-3) * expected.abs().max().item()
        torch.testing.assert_close(got, expected, rtol=0, atol=bound, msg=name)
        assert torch.equal(got.argmax(-1), expected.argmax(-1)), name


def _builds():
    """(march, csrc/layer.c built for it) for this CPU, for AVX2 and in plain C (None: no -march)."""
    from encore.model import layer_c

    for march in ("native", "x86-64-v3", None):
        flags = ("-O2",) if march is None else ("-O3", f"-march={march}")
        yield march, layer_c.library((*flags, "-fopenmp", "-shared", "-fPIC"))


@pytest.mark.parametrize("M,K,N", [(1, 384, 1152), (3, 100, 37), (5, 1030, 64), (2, 7, 9)])
def test_fp32_products_of_each_build_equal_the_product(M, K, N):
    """csrc/fp32.c's projection (a decode step's fp32 weights) built for this CPU, for AVX2 (8 wide, K % 8
    through masked loads) and in plain C: F.linear's numbers, to float rounding."""
    torch.manual_seed(K)
    x, w, bias = torch.randn(M, K), torch.randn(N, K), torch.randn(N)
    expected = torch.nn.functional.linear(x, w, bias)
    for march, lib in _builds():
        y = torch.empty(M, N)
        lib.encore_fp32_linear(x.data_ptr(), M, K, N, w.data_ptr(), bias.data_ptr(), y.data_ptr())
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-4, msg=str(march))


def test_the_activations_of_each_build_equal_torchs():
    """csrc/decode.c's MLP activations (`encore_act_rows`: act16 on AVX-512, act8 on AVX2, libm in plain
    C) over a wide range of inputs, both tails of e^x included."""
    import ctypes

    from encore.model.fused import ACT, gelu_tanh

    x = torch.cat([torch.linspace(-120, 120, 2001), torch.randn(1003) * 3])  # (3004: a tail past 8 and 16)
    for march, lib in _builds():
        lib.encore_act_rows.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
        for fn in (torch.nn.functional.silu, gelu_tanh, torch.nn.functional.gelu, torch.nn.functional.relu):
            y = x.clone()
            lib.encore_act_rows(y.data_ptr(), 1, y.numel(), ACT[fn])
            torch.testing.assert_close(y, fn(x), rtol=1e-5, atol=1e-6, msg=f"{march} {fn.__name__}")


def test_a_cpu_the_compiler_does_not_know_is_named_once(monkeypatch, tmp_path, capsys):
    """`$ENCORE_MARCH` naming no CPU gcc knows: the kernel is not built (its callers take the PyTorch
    paths) and one line names the compiler's error and the variable."""
    from encore.model import native

    monkeypatch.setattr(native, "MARCH", "no-such-cpu")
    monkeypatch.setattr(native, "_SAID", set())
    monkeypatch.setenv("ENCORE_CACHE", str(tmp_path))
    monkeypatch.delenv("ENCORE_QUIET", raising=False)
    assert native.build("fp32", ["-O2", "-march=no-such-cpu", "-fopenmp", "-shared", "-fPIC"]) is None
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "csrc/fp32.c is not built" in line and "bad value" in line and "$ENCORE_MARCH is 'no-such-cpu'" in line
