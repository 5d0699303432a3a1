"""csrc/int8.c's products equal their integer arithmetic on every path it has: a few rows (AVX-512 VNNI),
many rows (AMX tiles where the CPU has them; else VNNI against 48 packed rows a pass), shapes off the
tiles' grid, and plain C (no -march); and a decode step's rows give the same result whichever path
their number picks."""

import ctypes

import numpy as np
import pytest
import torch

from encore.model.fused_rows import FusedInt8Linear
from encore.model.kernels import Int8Linear, int8_available
from encore.model.layer_c import _I64, _PTR
from encore.model.layer_c import library as _layer_library
from encore.model.native import cpu_flags

pytestmark = pytest.mark.skipif(_layer_library() is None, reason="csrc/layer.c needs a C compiler on Linux")


def exact(x: np.ndarray, w: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Each row quantized symmetric to int8 (round to nearest), integer dot products, then the scales."""
    amax = np.abs(x).max(axis=1, keepdims=True)
    q = np.clip(np.rint(x * (127.0 / np.where(amax > 0, amax, 1.0))), -127, 127).astype(np.int64)
    return (q @ w.T.astype(np.int64)).astype(np.float32) * (amax / 127.0).astype(np.float32) * scales


def linear(lib, x: np.ndarray, w: np.ndarray, scales: np.ndarray) -> np.ndarray:
    lib.encore_int8_linear.restype = ctypes.c_int
    lib.encore_int8_linear.argtypes = [_PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR]
    sums = w.astype(np.int32).sum(axis=1).astype(np.int32)
    y = np.zeros((x.shape[0], w.shape[0]), np.float32)
    M, K = x.shape
    status = lib.encore_int8_linear(
        x.ctypes.data, M, K, w.shape[0], w.ctypes.data, scales.ctypes.data, sums.ctypes.data, None, y.ctypes.data
    )
    assert status == 0
    return y


SHAPES = [
    (1, 64, 16),  # one row: VNNI
    (15, 128, 32),  # under a tile's 16 rows: VNNI
    (16, 64, 16),  # one tile each way (AMX)
    (17, 192, 48),  # a second, mostly padded block of rows; an odd number of weight blocks
    (40, 256, 64),  # two pairs of row blocks, the last half full
    (33, 128, 40),  # N off the 16-row grid: VNNI's packed rows
    (20, 96, 32),  # K off the 64-byte grid: VNNI's packed rows (K a multiple of 16)
    (100, 64, 19),  # 7 row blocks (two passes of 3, one of 1), weight rows past the last 8
    (48, 16, 8),  # the shortest K the packed rows take
    (18, 20, 16),  # K off the 16-input grid: plain C
]

# csrc/layer.c for this CPU without AMX's instructions: many rows through VNNI's packed rows on any AVX-512
# VNNI machine (gcc's -mno-* options; the flags themselves are the cache key)
NO_AMX = ("-O3", "-march=native", "-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16", "-fopenmp", "-shared", "-fPIC")
# ... and for a CPU with AVX2 but neither AVX-512 nor VNNI (AMD Zen 2 / 3): x86-64-v3, on any AVX2 machine
AVX2 = ("-O3", "-march=x86-64-v3", "-fopenmp", "-shared", "-fPIC")


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_products_equal_their_integer_arithmetic(M, K, N):
    rng = np.random.default_rng(M * K + N)
    x = rng.standard_normal((M, K)).astype(np.float32)
    x[0] *= 1000  # a token with massive activations: its own scale
    if M > 2:
        x[1] = 0  # a zero row
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    scales = rng.random(N).astype(np.float32)
    reference = exact(x, w, scales)
    np.testing.assert_allclose(linear(_layer_library(), x, w, scales), reference, rtol=1e-5, atol=1e-5)
    vnni = _layer_library(NO_AMX)
    if vnni is not None and vnni.encore_int8_has_vnni():
        assert not vnni.encore_int8_has_amx()
        np.testing.assert_allclose(linear(vnni, x, w, scales), reference, rtol=1e-5, atol=1e-5)
    plain = _layer_library(("-O2", "-fopenmp", "-shared", "-fPIC"))  # no -march: neither VNNI nor AMX
    assert not plain.encore_int8_has_amx() and not plain.encore_int8_has_vnni() and not plain.encore_int8_has_simd()
    np.testing.assert_allclose(linear(plain, x, w, scales), reference, rtol=1e-5, atol=1e-5)
    if " avx2" in cpu_flags():  # the AVX2 products: the other paths' outputs, bit for bit
        avx2 = _layer_library(AVX2)
        assert avx2.encore_int8_has_simd() and not avx2.encore_int8_has_vnni()
        np.testing.assert_array_equal(linear(avx2, x, w, scales), linear(plain, x, w, scales))
        np.testing.assert_array_equal(linear(avx2, x, w, scales), linear(_layer_library(), x, w, scales))


@pytest.mark.parametrize("rows,out_features", [(5, 48), (40, 48), (100, 64), (40, 19)])
def test_an_activation_applied_as_the_outputs_are_written_equals_its_own_pass(rows, out_features):
    """`int8_rows_linear(..., act)`: many rows on VNNI apply the bias and the MLP activation in the
    products' epilogue, fewer rows (and AMX's int8 tiles) in a pass after them; either way the numbers
    of the product, then `encore_act_rows` (to the last bits: the compiler may fuse a multiply and an
    add differently in the two places)."""
    from encore.model import kernels
    from encore.model.fused import ACT, gelu_tanh

    if not kernels.rows_only_available():
        pytest.skip("needs csrc/int8.c's VNNI path")
    torch.manual_seed(rows)
    layer = Int8Linear(torch.randn(out_features, 64), torch.randn(out_features), rows_only=True)
    x = torch.randn(rows, 64)
    lib = _layer_library()
    lib.encore_act_rows.argtypes = [_PTR, _I64, _I64, _I64]
    for fn in (torch.nn.functional.gelu, gelu_tanh, torch.nn.functional.silu, torch.nn.functional.relu):
        with torch.inference_mode():
            plain = kernels.int8_rows_linear(x, *layer.rows(), layer._bias)
            fused = kernels.int8_rows_linear(x, *layer.rows(), layer._bias, ACT[fn])
        apart = plain.clone()
        lib.encore_act_rows(apart.data_ptr(), rows, out_features, ACT[fn])
        torch.testing.assert_close(fused, apart, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fused, fn(plain), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not int8_available(), reason="int8 needs fbgemm")
def test_a_decode_steps_rows_do_not_depend_on_how_many_there_are():
    """Rows alone (a few: VNNI) and 40 together (AMX where the CPU has it: any number of rows of a decode
    step) give the same numbers: the same quantization, the same integer sums."""
    torch.manual_seed(0)
    layer = FusedInt8Linear.of(Int8Linear(torch.randn(96, 128)))
    if not layer._amx:
        pytest.skip("a decode step's many rows run csrc/int8.c where the CPU has AMX (else the module's path)")
    x = torch.randn(40, 1, 128)  # [B, 1, D]: one new position a sequence
    with torch.inference_mode():
        together = layer(x)
        alone = torch.cat([layer(x[i : i + 4]) for i in range(0, 40, 4)])
    torch.testing.assert_close(together, alone, rtol=1e-6, atol=1e-6)
    w, scales, _ = layer.rows()
    reference = exact(x[:, 0].numpy(), w.numpy(), scales.numpy())
    np.testing.assert_allclose(together[:, 0].numpy(), reference, rtol=1e-5, atol=1e-5)


def test_many_rows_on_amx_bf16_tiles_equal_the_bf16_product():
    """csrc/rows.c's AMX bf16 product (a prefill's int8 products): bf16 activations times
    the bf16 weight int8 x scale, accumulated and returned in fp32, as the exact product of those bf16
    numbers; `Int8Linear` takes it where the CPU has AMX."""
    from encore.model import kernels

    if not kernels._amx_bf16():
        pytest.skip("needs AMX bf16 tiles")
    torch.manual_seed(0)
    layer = Int8Linear(torch.randn(48, 96), torch.randn(48))
    w, scales, _ = layer.rows()
    bf16_weight = kernels.int8_bf16_weight(w, scales).float()
    for rows in (33, 40, 600):  # padded row blocks, an odd number of weight blocks, many rows
        x = torch.randn(rows, 96)
        exact = x.bfloat16().float() @ bf16_weight.T + layer._bias
        with torch.inference_mode():
            torch.testing.assert_close(kernels.int8_amx_bf16(x, w, scales, layer._bias), exact, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(layer(x), exact, rtol=1e-5, atol=1e-5)
    assert kernels.amx_bf16_rows(96, 48) and not kernels.amx_bf16_rows(80, 48)
    with pytest.raises(ValueError, match=r"\[48, 80\]"):
        kernels.int8_amx_bf16(torch.randn(40, 80), torch.zeros(48, 80, dtype=torch.int8), scales, None)
    with pytest.raises(ValueError, match=r"rows of 64 inputs for a \[48, 96\] weight"):
        kernels.int8_amx_bf16(torch.randn(40, 64), w, scales, None)


def test_the_int8_weight_as_bf16_rounds_as_torch_does():
    """`int8_bf16_weight` (csrc/rows.c's `encore_int8_to_bf16`, 32 inputs at a time through the AMX
    product's own conversion, a scalar tail past the last 32): bf16(w x scale) rounded to nearest even,
    bit for bit torch's conversion, whatever the width."""
    from encore.model import kernels

    if not kernels.int8_bf16_many_rows():
        pytest.skip("needs csrc/rows.c built for AVX512-BF16")
    torch.manual_seed(0)
    for n, k in ((48, 96), (33, 47), (7, 16), (64, 1024)):
        w, scales = torch.randint(-127, 128, (n, k), dtype=torch.int8), torch.rand(n) * 0.1
        want = (w.float() * scales[:, None]).bfloat16()
        assert torch.equal(kernels.int8_bf16_weight(w, scales).view(torch.int16), want.view(torch.int16)), (n, k)


def test_amx_outputs_written_beside_the_next_products_cover_every_block():
    """Each 2 x 2 block of outputs is written (bias, activation, packed bf16 rows) while the tiles run
    the next block, across each thread's weight blocks, and the last one after them: 400 outputs are
    13 weight blocks of 32 (the last 16 wide), 600 rows an odd last row block; every output is there."""
    from encore.model import kernels
    from encore.model.fused import ACT, gelu_tanh

    if not kernels._amx_bf16():
        pytest.skip("needs AMX bf16 tiles")
    torch.manual_seed(0)
    layer = Int8Linear(torch.randn(400, 96), torch.randn(400))
    w, scales, _ = layer.rows()
    x = torch.randn(600, 96)
    exact = x.bfloat16().float() @ kernels.int8_bf16_weight(w, scales).float().T
    identity = Int8Linear(torch.eye(384))  # reads packed rows back: exact for bf16 numbers
    with torch.inference_mode():
        plain = kernels.int8_amx_bf16(x, w, scales, None)
        biased = kernels.int8_amx_bf16(x, w, scales, layer._bias, act=ACT[gelu_tanh])
        packed = kernels.int8_amx_bf16(x, w[:384], scales[:384], None, act=ACT[torch.nn.functional.relu], tiles=True)
        unpacked = kernels.int8_amx_bf16(packed, *identity.rows()[:2], None)[:, :384]
    torch.testing.assert_close(plain, exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(biased, gelu_tanh(exact + layer._bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unpacked, plain[:, :384].relu().bfloat16().float(), rtol=0, atol=0)
    last_block = packed.data[592:608].reshape(384 // 32, 16, 32)  # tile by tile: 16 rows x 32 outputs each
    assert last_block[:, :8].any() and not last_block[:, 8:].any()  # rows 600-607 are zero


@pytest.mark.skipif(not int8_available(), reason="int8 needs fbgemm")
def test_rows_only_the_weight_is_held_once_and_gives_the_same_numbers():
    """`release_packed` (what `optimize` does where encore's kernels cover every call): fbgemm's packed
    copy goes; the checkpoint tensors are the same; few rows are csrc/int8.c's arithmetic, many rows the
    bf16 product as before where the CPU has it, else csrc/int8.c's too."""
    from encore.model.kernels import rows_only_available

    if not rows_only_available():
        pytest.skip("needs csrc/int8.c's VNNI path")
    torch.manual_seed(0)
    layer = Int8Linear(torch.randn(48, 128), torch.randn(48))
    saved = [t.clone() for t in layer.quantized()]
    many = torch.randn(40, 128)
    with torch.inference_mode():
        before = layer(many)
    layer.release_packed()
    assert layer._packed is None
    for got, want in zip(layer.quantized(), saved):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    few = torch.randn(3, 128)
    w, scales, _ = layer.rows()
    with torch.inference_mode():
        after, got = layer(many), layer(few)
    if layer._many(40):  # the bf16 products, as before
        torch.testing.assert_close(after, before, rtol=0, atol=0)
    else:  # csrc/int8.c where fbgemm's GEMM ran: the same integer arithmetic, in other float steps
        reference = exact(many.numpy(), w.numpy(), scales.numpy()) + layer._bias.numpy()
        np.testing.assert_allclose(after.numpy(), reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-3)
    reference = exact(few.numpy(), w.numpy(), scales.numpy()) + layer._bias.numpy()
    np.testing.assert_allclose(got.numpy(), reference, rtol=1e-5, atol=1e-5)


def test_rows_only_weights_of_the_wrong_shapes_are_named():
    """`from_quantized(rows_only=True)` (a quantized checkpoint's load): the C kernels read the tensors
    unchecked, so scales or a bias that do not match the weight's rows are refused, with their shapes."""
    w = torch.zeros(8, 32, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"int8 weight \[8, 32\] .* got scales \[7\], bias None"):
        Int8Linear.from_quantized(w, torch.ones(7), rows_only=True)
    with pytest.raises(ValueError, match=r"got scales \[8\], bias \[4\]"):
        Int8Linear.from_quantized(w, torch.ones(8), torch.zeros(4), rows_only=True)
    with pytest.raises(ValueError, match=r"needs 2 dimensions"):
        Int8Linear.from_quantized(w.view(-1), torch.ones(8), rows_only=True)
    assert Int8Linear.from_quantized(w, torch.ones(8), torch.zeros(8), rows_only=True).rows()[0] is not None


@pytest.mark.skipif(not int8_available(), reason="int8 needs fbgemm")
def test_optimize_never_holds_two_copies_of_the_int8_weights(monkeypatch):
    """Where the rows cover every call, each projection is made as csrc/int8.c's rows alone: fbgemm's
    packed copy is never made (a 10B decoder-only model peaked at 2 bytes a weight while both lived), and
    a quantized checkpoint loads the same way."""
    from conftest import make_model

    import encore
    from encore.model.kernels import rows_only_available

    if not rows_only_available():
        pytest.skip("needs csrc/int8.c's VNNI path")

    def refuse(self, qweight, bias):
        raise AssertionError("a projection was packed for fbgemm")

    monkeypatch.setattr(Int8Linear, "_pack", refuse)
    model = encore.optimize(make_model("deconly"), quantize="int8")
    made = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(made) > 4 and all(m._packed is None and m.row_weight.dtype == torch.int8 for m in made)
    with torch.inference_mode():
        assert model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3).shape == (1, 3)


@pytest.mark.skipif(not int8_available(), reason="int8 needs fbgemm")
def test_int8_prefill_products_round_each_row_to_int8():
    """`optimize(prefill_products="int8")`: a prefill's many rows are quantized per row like a decode
    step's (CTranslate2's numerics), so each row's result is the integer arithmetic, independent of the
    rows beside it; a bad value is named."""
    from conftest import make_model

    import encore

    model = encore.optimize(make_model("encdec"), quantize="int8", prefill_products="int8")
    layer = model.get_submodule("encoder.0.mlp.up")
    assert isinstance(layer, Int8Linear) and not layer.bf16_many_rows and "many rows: int8" in repr(layer)
    assert encore.infer.optimize.optimized(model)["prefill_products"] == "int8"
    x = torch.randn(40, layer.in_features)
    w, scales, _ = layer.rows()
    with torch.inference_mode():
        together = layer(x)
        alone = torch.cat([layer(x[i : i + 5]) for i in range(0, 40, 5)])
    torch.testing.assert_close(together, alone, rtol=1e-6, atol=1e-6)
    bias = 0 if layer._bias is None else layer._bias.numpy()
    reference = exact(x.numpy(), w.numpy(), scales.numpy()) + bias
    np.testing.assert_allclose(together.numpy(), reference, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="prefill_products"):
        encore.optimize(make_model("encdec"), quantize="int8", prefill_products="fp8")


def test_auto_prefill_products_follow_the_machines_measure(monkeypatch):
    """`prefill_products="auto"`: bf16 products on AMX; without AMX, what the one-time probe measured
    (`probes.bf16_products_by_default`). Either way each projection holds its weight once, as
    csrc/int8.c's rows: its many int8 rows beat fbgemm's packed GEMM with VNNI too."""
    from conftest import make_model

    import encore
    from encore.model import kernels, probes

    if not (kernels.int8_bf16_many_rows() and kernels.rows_only_available()):
        pytest.skip("needs the bf16 products and csrc/int8.c's VNNI rows")
    monkeypatch.setattr(kernels, "_amx_bf16", lambda: False)
    for measured_bf16_faster in (False, True):
        measured = {"bf16_faster": measured_bf16_faster}
        monkeypatch.setattr(probes, "_probe_record", lambda key, what, measured=measured: measured)
        model = encore.optimize(make_model("encdec"), quantize="int8")
        linears = [m for m in model.modules() if isinstance(m, Int8Linear)]
        assert linears and all(m.bf16_many_rows == measured_bf16_faster for m in linears)
        assert not any(m._packed is not None for m in linears)
        with torch.inference_mode():  # 40 >= MANY_ROWS positions: the path chosen runs
            assert model.prefill(torch.randint(5, 100, (1, 40)), None, 1)[0].isfinite().all()
