"""A prefill's fused CPU kernels (encore/model/fused.py): attention over many queries with bf16 products
(csrc/attend.c, `FusedAttend(bf16_prefill=True)`, what `encore.optimize` gives a quantized model) or in
fp32 (`FusedAttend()`), and a gated MLP's activation in one pass (`FusedMLP`), each against the eager path
it replaces."""

import copy
import functools

import pytest
import torch
from conftest import make_model

import encore
from encore.config import ModelConfig
from encore.infer.optimize import optimized
from encore.model import fused as fused_module
from encore.model import native
from encore.model.fused import (
    ACT,
    FusedAttend,
    FusedMLP,
    _attend_fp32_library,
    _attend_library,
    bf16_attention_available,
    fused_available,
)
from encore.model.layers import MLP, SoftCap, attend
from encore.model.probes import bf16_attention_faster

pytestmark = pytest.mark.skipif(not fused_available(), reason="the fused kernels need a C compiler on Linux")
needs_bf16 = pytest.mark.skipif(not bf16_attention_available(), reason="csrc/attend.c runs on CPUs with AVX512-BF16")
needs_fp32 = pytest.mark.skipif(_attend_fp32_library() is None, reason="csrc/attend.c's fp32 loops need AVX-512")


def close_to_bf16(got: torch.Tensor, want: torch.Tensor) -> None:
    """Within bf16's rounding of q, k, v and the softmax weights: ~0.5% of the output's scale (measured
    0.3-0.5% on random inputs), against SDPA's fp32."""
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1.5e-2 * want.abs().max().item())


@needs_bf16
@pytest.mark.parametrize(
    "B,H,KH,T,S,Dh",
    [
        (1, 4, 1, 300, 300, 256),
        (2, 6, 3, 37, 37, 64),
        (3, 4, 2, 70, 90, 128),
        (2, 2, 2, 5, 100, 96),
        (1, 8, 8, 2, 2, 32),
    ],
)
def test_bf16_prefill_attention_equals_sdpa(B, H, KH, T, S, Dh):
    """GQA, strided K/V (a fused projection's layout), head dims that fill a 64-column panel or not,
    key counts off the 16 / 64 grid; no mask, padding masks per row, a shared mask, sliding windows,
    causal calls, a query scale and soft-capped logits."""
    g = torch.Generator().manual_seed(T + S)
    q = torch.randn(B, H, T, Dh, generator=g)
    k, v = torch.randn(B, S, 2, KH, Dh, generator=g).permute(2, 0, 3, 1, 4)
    lengths = torch.randint(1, S + 1, (B,), generator=g)
    padding = (torch.arange(S)[None] < lengths[:, None])[:, None, None, :]  # [B, 1, 1, S]
    window = ((torch.arange(T)[:, None] + S - T - torch.arange(S)[None]).abs() < 17)[None, None]  # [1, 1, T, S]
    masks = {"none": None, "padding": padding, "window": window, "window+padding": window & padding}
    fused = FusedAttend(bf16_prefill=True)
    for name, mask in masks.items():
        for scale, cap in ((None, None), (0.3, SoftCap(5.0))):
            if name == "window+padding":
                mask[:, :, :, 0] = True  # every query has a key (a query with none: the next test)
            close_to_bf16(fused(q, k, v, mask, False, 0.0, scale, cap), attend(q, k, v, mask, False, 0.0, scale, cap))
    # T5's relative positions: an fp32 bias per head, -inf where padded (the keys of each row's first)
    bias = torch.randn(B, H, T, S, generator=g).masked_fill(~padding, float("-inf"))
    for b in (bias, bias[:1, :1]):
        close_to_bf16(fused(q, k, v, b, False, 0.0), attend(q, k, v, b, False, 0.0))
    if T == S:
        close_to_bf16(fused(q, k, v, None, True, 0.0), attend(q, k, v, None, True, 0.0))


@needs_fp32
@pytest.mark.parametrize("B,H,KH,T,S,Dh", [(1, 4, 1, 300, 300, 256), (3, 4, 2, 70, 90, 128), (2, 2, 2, 5, 100, 96)])
def test_fp32_prefill_attention_equals_sdpa(B, H, KH, T, S, Dh):
    """csrc/attend.c in fp32 (`FusedAttend()` without bf16): SDPA's numbers to fp32 rounding, with padding
    masks, a query scale, soft-capped logits, T5's bias and causal calls."""
    g = torch.Generator().manual_seed(T + S)
    q = torch.randn(B, H, T, Dh, generator=g)
    k, v = torch.randn(B, S, 2, KH, Dh, generator=g).permute(2, 0, 3, 1, 4)
    padding = (torch.arange(S)[None] < torch.randint(1, S + 1, (B,), generator=g)[:, None])[:, None, None, :]
    bias = torch.randn(B, H, T, S, generator=g).masked_fill(~padding, float("-inf"))
    fused = FusedAttend()
    assert "fp32 (c)" in repr(fused)
    calls = [(None, False, None, None), (padding, False, 0.3, SoftCap(5.0)), (bias, False, None, None)]
    calls += [(None, True, None, None)] if T == S else []
    for mask, causal, scale, cap in calls:
        want = attend(q, k, v, mask, causal, 0.0, scale, cap)
        torch.testing.assert_close(fused(q, k, v, mask, causal, 0.0, scale, cap), want, rtol=1e-5, atol=1e-5)


@needs_fp32
def test_fp32_prefill_attention_does_not_depend_on_the_padding():
    """A prompt's attention gets the same bits alone and padded among longer ones (the engine prefills
    requests together): its keys are summed in one order, padding adds exact zeros. SDPA's flash kernel
    splits the keys by the padded length, which moved an engine's greedy reply off its solo one."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(1, 6, 11, 64, generator=g),
        torch.randn(1, 3, 11, 64, generator=g),
        torch.randn(1, 3, 11, 64, generator=g),
    )
    fused = FusedAttend()
    alone = fused(q, k, v, None, False, 0.0)
    for length in (12, 16, 40, 100):
        qp, kp, vp = (torch.cat([t, torch.randn(1, t.shape[1], length - 11, 64, generator=g)], 2) for t in (q, k, v))
        mask = (torch.arange(length) < 11)[None, None, None, :]
        assert torch.equal(fused(qp, kp, vp, mask, False, 0.0)[:, :11], alone), length


@needs_bf16
def test_bf16_prefill_attention_edge_cases():
    """A query with no key to attend gets zeros; what the kernel does not take runs SDPA exactly: a head
    dim off the 32 grid, dropout, gradients, a per-head mask, a causal call over more keys than queries."""
    fused = FusedAttend(bf16_prefill=True)
    q, k, v = torch.randn(2, 2, 6, 64), torch.randn(2, 1, 20, 64), torch.randn(2, 1, 20, 64)
    mask = torch.ones(2, 1, 6, 20, dtype=torch.bool)
    mask[0, :, 2] = False
    out = fused(q, k, v, mask, False, 0.0)
    assert out[0, 2].abs().max() == 0
    want = attend(q, k, v, mask, False, 0.0)
    close_to_bf16(out[1], want[1])
    close_to_bf16(out[0, [0, 1, 3, 4, 5]], want[0, [0, 1, 3, 4, 5]])
    q80, k80 = torch.randn(1, 2, 5, 80), torch.randn(1, 2, 5, 80)
    torch.testing.assert_close(fused(q80, k80, k80, None, True, 0.0), attend(q80, k80, k80, None, True, 0.0))
    per_head = torch.rand(2, 2, 6, 20) > 0.3
    per_head[..., 0] = True
    torch.testing.assert_close(fused(q, k, v, per_head, False, 0.0), attend(q, k, v, per_head, False, 0.0))
    k10, v10 = k[:, :, :10], v[:, :, :10]  # a causal call over more keys than queries: SDPA's alignment, SDPA
    torch.testing.assert_close(fused(q, k10, v10, None, True, 0.0), attend(q, k10, v10, None, True, 0.0))
    torch.manual_seed(0)
    dropped = fused(q, k, v, None, False, 0.5)
    torch.manual_seed(0)
    torch.testing.assert_close(dropped, attend(q, k, v, None, False, 0.5))
    qg = q.clone().requires_grad_()
    torch.testing.assert_close(fused(qg, k, v, None, False, 0.0), attend(q, k, v, None, False, 0.0))


def test_the_plain_c_build_has_no_bf16_attention():
    """Without AVX512-BF16 or AVX-512 (here: no -march) csrc/attend.c builds and says so; optimize then
    keeps SDPA."""
    plain = native.load("attend", ["-O2", "-fopenmp", "-shared", "-fPIC"])
    assert plain is not None and plain.encore_attend_bf16_built() == 0 and plain.encore_attend_fp32_built() == 0
    assert _attend_library(("-O2", "-fopenmp", "-shared", "-fPIC")) is None
    assert _attend_fp32_library(("-O2", "-fopenmp", "-shared", "-fPIC")) is None


@pytest.mark.parametrize("arch", ["encdec", "deconly"])
def test_prefill_attention_settings(arch, monkeypatch):
    """prefill_attention="auto" is bf16 for a quantized model where the CPU runs it faster, fp32 for an fp32
    model; "bf16" elsewhere, or an unknown value, is refused in one line."""
    model = make_model(arch)
    want = "bf16" if bf16_attention_faster() else "fp32"  # measured once per machine
    assert optimized(encore.optimize(copy.deepcopy(model), quantize="int8"))["prefill_attention"] == want
    assert optimized(encore.optimize(copy.deepcopy(model)))["prefill_attention"] == "fp32"
    assert (
        optimized(encore.optimize(copy.deepcopy(model), quantize="int8", prefill_attention="fp32"))["prefill_attention"]
        == "fp32"
    )
    with pytest.raises(ValueError, match="prefill_attention must be one of"):
        encore.optimize(copy.deepcopy(model), prefill_attention="fp16")
    monkeypatch.setattr(fused_module, "_attend_library", lambda *flags: None)  # a CPU without AVX512-BF16
    with pytest.raises(ValueError, match="prefill_attention='bf16' is a fused CPU kernel"):
        encore.optimize(copy.deepcopy(model), prefill_attention="bf16")
    assert optimized(encore.optimize(model, quantize="int8"))["prefill_attention"] == "fp32"


@needs_bf16
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_a_model_with_bf16_prefill_attention(arch, quantize):
    """Every attention product of the model takes bf16 products for many queries (the encoder's, a
    decoder-only prefill's, soft-capped ones); the first-token logits stay within bf16's rounding of
    SDPA's, and decoding is the same kernel as before."""
    overrides = dict(norm_kind="rms_offset", block_order="sandwich", qk_norm=True, attn_softcap=20.0, head_dim=32)
    model = make_model(arch, **overrides)
    fp32 = encore.optimize(copy.deepcopy(model), quantize=quantize, prefill_attention="fp32")
    bf16 = encore.optimize(model, quantize=quantize, prefill_attention="bf16")
    products = [m for m in bf16.modules() if isinstance(m, FusedAttend)]
    assert products and all(m.bf16_prefill for m in products) and "bf16 products" in repr(bf16)
    ids = torch.randint(3, 512, (2, 40), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    with torch.inference_mode():
        want, got = fp32.prefill(ids, mask, 4)[0], bf16.prefill(ids, mask, 4)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=3e-2 * want.abs().max().item())
    encore.deoptimize(bf16)
    assert not any(isinstance(m, FusedAttend) for m in bf16.modules())


@pytest.mark.parametrize("mlp_type", ["swiglu", "geglu", "gelu", "silu", "gelu_exact", "relu"])
def test_fused_mlp_equals_the_mlp(mlp_type):
    """act(gate) * up (gated) or act(up) (ungated: GELU-tanh, SiLU, GELU, ReLU) in one C pass: the MLP's output to
    float rounding, for a prefill's rows (split over threads) and a single row."""
    mlp = MLP(ModelConfig.preset("deconly-tiny", mlp_type=mlp_type))
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0, 0.5)
    fused = FusedMLP.of(mlp)
    assert fused.state_dict().keys() == mlp.state_dict().keys()
    for shape in ((2, 300, mlp.up.in_features), (1, 1, mlp.up.in_features)):
        x = torch.randn(*shape)
        with torch.inference_mode():
            torch.testing.assert_close(fused(x), mlp(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantize", ["int8", "int4"])
@pytest.mark.parametrize("mlp_type", ["gelu", "silu", "gelu_exact", "relu"])
def test_an_ungated_mlp_on_the_amx_tiles_in_two_calls(quantize, mlp_type):
    """A prefill's ungated MLP on AMX's bf16 tiles: the up projection applies the activation as it writes
    its outputs, packed as the down projection's bf16 input (`BF16Tiles`): no pass of its own, no fp32
    hidden rows; the same output as the projection, the activation, then the down projection's own
    packing of those rows."""
    from encore.model.int4 import Int4Linear
    from encore.model.kernels import BF16Tiles, Int8Linear

    mlp = MLP(ModelConfig.preset("deconly-tiny", mlp_type=mlp_type))
    make = Int8Linear if quantize == "int8" else functools.partial(Int4Linear, group_size=32)
    mlp.up, mlp.down = (make(m.weight.detach() * 20, m.bias) for m in (mlp.up, mlp.down))
    x = torch.randn(2, 37, mlp.up.in_features)  # 74 rows: the last 16-row block half padding
    fused = FusedMLP.of(mlp.eval())
    with torch.inference_mode():
        if not (mlp.up.on_tiles(74) and mlp.down.on_tiles(74)):
            pytest.skip("needs AMX bf16 tiles")
        h = mlp.act(mlp.up(x))
        torch.testing.assert_close(mlp.up(x, act=ACT[mlp.act]).view_as(h), h, rtol=1e-5, atol=1e-5)
        packed = mlp.up(x, act=ACT[mlp.act], tiles=True)
        assert isinstance(packed, BF16Tiles) and packed.shape == (74, mlp.up.out_features)
        last = packed.data[64:80].reshape(-1, 16, 32)  # the last row block, tile by tile (16 rows x 32)
        assert last[:, :10].any() and not last[:, 10:].any()  # the rows past 74 are zero
        want = mlp.down(mlp.up(x, act=ACT[mlp.act]).view_as(h))  # the hidden rows through fp32
        torch.testing.assert_close(mlp.down(packed).view_as(want), want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(fused(x), want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(fused(x), mlp.down(h), rtol=1e-3, atol=1e-3)  # torch's activation: bf16 ties
        assert not mlp.up.on_tiles(1)  # a decode step's row: the module's own path
