"""The fused CPU kernels `encore.optimize` swaps in (encore/model/fused.py, csrc/decode.c): each equals
the eager module it replaces, and a fused model generates the eager model's tokens."""

import copy
import functools

import pytest
import torch
from conftest import engine_tokens, make_model

import encore
from encore import Engine
from encore.infer.optimize import optimized
from encore.model import fused as fused_module
from encore.model import layer_c
from encore.model.fused import FusedAttend, FusedRMSNorm, FusedSelfAttention, fused_available
from encore.model.fused_layer import FusedDecoderLayer, FusedMergedDecoderLayer
from encore.model.layers import Attend, OffsetRMSNorm, RMSNorm, SelfAttention, SoftCap, attend

pytestmark = pytest.mark.skipif(not fused_available(), reason="the fused kernels need a C compiler on Linux")


@pytest.mark.parametrize(
    "B,H,KH,S,Dh,masked",
    [(1, 6, 3, 512, 64, False), (3, 8, 2, 37, 128, True), (2, 4, 4, 100, 256, True), (2, 4, 1, 70, 32, True),
     (1, 2, 1, 1, 64, False), (4, 6, 3, 600, 64, True), (2, 16, 2, 33, 80, True)],
)  # fmt: skip
def test_one_query_attention_equals_sdpa(B, H, KH, S, Dh, masked):
    """GQA, masks per row, strided K/V (the cross K/V's layout), head dims with and without the
    vector path, positions split over threads; with a query scale and soft-capped logits too."""
    g = torch.Generator().manual_seed(S)
    q = torch.randn(B, H, 1, Dh, generator=g)
    k, v = torch.randn(B, S, 2, KH, Dh, generator=g).permute(2, 0, 3, 1, 4)
    mask = None
    if masked:
        mask = torch.rand(B, 1, 1, S, generator=g) > 0.3
        mask[..., 0] = True
    fused = FusedAttend()
    for scale, cap in ((None, None), (0.3, SoftCap(5.0))):
        expected = attend(q, k, v, mask, False, 0.0, scale, cap)
        torch.testing.assert_close(fused(q, k, v, mask, False, 0.0, scale, cap), expected, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("heads_share", [False, True])
def test_one_query_attention_takes_an_additive_bias(heads_share):
    """T5's relative positions reach a decode step's attention as a float mask [B, H | 1, 1, S] (-inf
    hides a key): the C kernel adds it to the logits as SDPA does."""
    g = torch.Generator().manual_seed(7)
    B, H, KH, S, Dh = 3, 4, 4, 70, 64
    q, k, v = torch.randn(B, H, 1, Dh, generator=g), torch.randn(B, KH, S, Dh, generator=g), torch.randn(B, KH, S, Dh)
    bias = torch.randn(B, 1 if heads_share else H, 1, S, generator=g)
    bias[1, ..., 40:] = float("-inf")
    with torch.inference_mode():
        got = FusedAttend()(q, k, v, bias, False, 0.0, 1.0)
    torch.testing.assert_close(got, attend(q, k, v, bias, False, 0.0, 1.0), rtol=1e-5, atol=2e-6)


def test_attention_edge_cases():
    """A row with nothing to attend gets zeros; a broadcast mask serves every row; prefill shapes and
    causal calls without a mask run SDPA."""
    fused = FusedAttend()
    q, k = torch.randn(2, 2, 1, 64), torch.randn(2, 1, 20, 64)
    mask = torch.zeros(2, 1, 1, 20, dtype=torch.bool)
    mask[1] = True
    out = fused(q, k, k, mask, False, 0.0)
    assert out.shape == (2, 1, 128) and out[0].abs().max() == 0
    torch.testing.assert_close(out[1], attend(q, k, k, mask, False, 0.0)[1])
    shared = torch.rand(1, 1, 1, 20) > 0.5
    shared[..., 3] = True
    torch.testing.assert_close(fused(q, k, k, shared, False, 0.0), attend(q, k, k, shared, False, 0.0))
    q5 = torch.randn(2, 2, 5, 64)
    torch.testing.assert_close(fused(q5, k, k, None, True, 0.0), attend(q5, k, k, None, True, 0.0))


@pytest.mark.parametrize("cls", [RMSNorm, OffsetRMSNorm])
def test_fused_norm_equals_the_norm(cls):
    norm = cls(96, 1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 96)
    fused = FusedRMSNorm(norm)
    assert fused.state_dict().keys() == norm.state_dict().keys()
    torch.testing.assert_close(fused(x), norm(x), rtol=1e-5, atol=1e-5)
    strided = torch.randn(4, 2, 96)[:, 0]  # rows not adjacent
    torch.testing.assert_close(fused(strided), norm(strided), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_fused_linear_equals_onednn(bias):
    """A few rows (a decode step's head) through csrc/fp32.c, more through oneDNN: the same products to
    float rounding, K off the 16-wide grid included; the very weight is held."""
    from encore.model.fused import FP32_MAX_ROWS, FusedLinear
    from encore.model.kernels import OneDNNLinear

    weight = torch.nn.Parameter(torch.randn(37, 70), requires_grad=False)
    b = torch.nn.Parameter(torch.randn(37), requires_grad=False) if bias else None
    plain, fused = OneDNNLinear(weight, b), FusedLinear(weight, b)
    assert fused.weight is weight and "c-fp32" in repr(fused)
    for rows in (1, 3, FP32_MAX_ROWS, FP32_MAX_ROWS + 1, 40):
        x = torch.randn(rows, 1, 70)
        with torch.inference_mode():
            torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-5)


GEMMA_LIKE = dict(norm_kind="rms_offset", block_order="sandwich", qk_norm=True, attn_softcap=20.0, attn_scale=0.2)
SLIDING = dict(qkv_bias=True, sliding_window=3, decoder_layer_types=["sliding", "full"], rope_local_theta=500.0)
# the deployed families' blocks (#37): T5's relative bias, unscaled attention, gated GELU; BART's post-norm
# LayerNorms, biases, learned positions, GELU; Marian's sinusoids and SiLU; NLLB's pre-norm and ReLU
T5_LIKE = dict(position_kind="relative", n_kv_heads=4, attn_scale=1.0, mlp_type="geglu", relative_buckets=8,
               relative_max_distance=16)  # fmt: skip
BART_LIKE = dict(norm_kind="layernorm", block_order="post", position_kind="learned", position_offset=2,
                 proj_bias=True, mlp_type="gelu_exact", embed_norm=True, norm_eps=1e-5)  # fmt: skip
MARIAN_LIKE = dict(BART_LIKE, position_kind="sinusoidal", position_offset=0, mlp_type="silu", embed_norm=False)
NLLB_LIKE = dict(BART_LIKE, block_order="pre", position_kind="sinusoidal_fairseq", mlp_type="relu")
FAMILIES = {"t5-like": T5_LIKE, "bart-like": BART_LIKE, "marian-like": MARIAN_LIKE, "nllb-like": NLLB_LIKE}


def spread_vectors(model) -> None:
    """Norm scales and biases away from their initial ones and zeros, so that a kernel that skips one shows."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))


@pytest.mark.parametrize("overrides", [{}, GEMMA_LIKE, SLIDING], ids=["encore", "gemma-like", "sliding-bias"])
def test_fused_model_generates_the_eager_tokens(arch, overrides):
    """optimize swaps every norm and attention product (visible, undone by deoptimize); greedy tokens
    and logits match the unfused model, left-padded rows included; fused=False keeps them eager."""
    if arch == "encdec" and "decoder_layer_types" in overrides:
        overrides = {**overrides, "encoder_layer_types": ["sliding", "full"]}
    model = make_model(arch, **overrides)
    eager = encore.optimize(copy.deepcopy(model), fused=False)
    assert optimized(eager)["fused"] is False and not any(isinstance(m, FusedAttend) for m in eager.modules())
    norms = {n: m for n, m in model.named_modules() if type(m) in (RMSNorm, OffsetRMSNorm)}
    fused = encore.optimize(model, kv_dtype=torch.float32)  # (fp16 K/V's rounding: test_half_precision_kv_cache)
    assert optimized(fused)["fused"] is True and "kernel=c" in repr(fused)
    assert not any(type(m) in (RMSNorm, OffsetRMSNorm, Attend, SelfAttention) for m in fused.modules())
    assert any(isinstance(m, FusedSelfAttention) for m in fused.modules())
    ids = torch.randint(3, 512, (2, 9), generator=torch.Generator().manual_seed(2))  # past the window of 3
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.inference_mode():
        want, got = eager.prefill(ids, mask, 8), fused.prefill(ids, mask, 8)
        for _ in range(6):
            torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
            tokens = want[0].argmax(-1)
            want, got = (eager.decode_step(tokens, want[1]), want[1]), (fused.decode_step(tokens, got[1]), got[1])
    assert torch.equal(fused.generate(ids, mask, max_new_tokens=8), eager.generate(ids, mask, max_new_tokens=8))
    encore.deoptimize(fused)
    assert {n: m for n, m in fused.named_modules() if type(m) in (RMSNorm, OffsetRMSNorm)} == norms
    assert not any(isinstance(m, (FusedAttend, FusedRMSNorm, FusedSelfAttention)) for m in fused.modules())
    assert sum(type(m) is SelfAttention for m in fused.modules()) == sum(
        type(m) is SelfAttention for m in eager.modules()
    )


@pytest.mark.parametrize("quantize", [None, "int4", "int8"])
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {**GEMMA_LIKE, "mlp_type": "geglu"},
        {**SLIDING, "mlp_type": "swiglu"},
        {**GEMMA_LIKE, **SLIDING, "merged_attention": True},
        *FAMILIES.values(),
    ],
    ids=["encore", "gemma-like-geglu", "sliding-bias-swiglu", "t5gemma2-like", *FAMILIES],
)
def test_fused_layer_equals_its_modules(arch, overrides, quantize):
    """fp32, int4 and int8 run each decoder layer's decode step as one C call (`FusedDecoderLayer`): the
    K/V it writes and its logits equal those of the same layers run module by module (the same norm and
    attention kernels; oneDNN's fp32, int4's kernel, or fbgemm's int8 with the same per-row activation
    scales), rows padded and past the window (`assert_like_its_modules`); deoptimize puts the very
    layers back."""
    if arch == "encdec" and "decoder_layer_types" in overrides:
        overrides = {**overrides, "encoder_layer_types": ["sliding", "full"]}
    if overrides.get("merged_attention") and arch != "encdec":
        pytest.skip("merged attention is an encoder-decoder's")
    model = make_model(arch, **overrides)
    spread_vectors(model)
    layers = list(model.decoder)
    fused = encore.optimize(model, quantize=quantize)
    if quantize == "int8" and not layer_c.library().encore_int8_has_vnni():
        pytest.skip("int8 layers fuse only where csrc/int8.c has its VNNI path")
    kind = FusedMergedDecoderLayer if overrides.get("merged_attention") else FusedDecoderLayer
    assert [type(m) for m in fused.decoder] == [kind] * len(layers)
    assert_like_its_modules(fused)
    encore.deoptimize(fused)
    assert list(fused.decoder) == layers


@pytest.mark.parametrize("overrides", [{}, BART_LIKE], ids=["encore", "bart-like"])
def test_rows_sharing_one_cross_kv(overrides):
    """A beam's hypotheses (Whisper's window decoding) share the input's one cross K/V [1, KH, S, Dh]:
    the fused layers read it for every row, as the modules do (it once read past it and crashed)."""
    fused = encore.optimize(make_model("encdec", **overrides))
    modules = copy.deepcopy(fused)
    for layer in modules.decoder:
        layer.forward = functools.partial(layer._eager.forward, layer)
    ids = torch.randint(3, 512, (1, 9), generator=torch.Generator().manual_seed(8))
    rows, tokens = torch.tensor([0, 0, 0]), torch.tensor([5, 6, 7])
    with torch.inference_mode():
        steps = []
        for model in (fused, modules):
            cache = model.prefill(ids, None, 4)[1].select_rows(rows, cross=False)
            assert cache.cross_k.shape[1] == 1  # [L, 1, KH, S, Dh]
            steps.append(model.decode_step(tokens, cache))
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-4, atol=1e-4 * steps[1].abs().max().item())


def test_a_layer_the_fused_path_cannot_run_keeps_its_modules():
    """A layer whose norms disagree on eps keeps the module path; fp32, int4 and int8 projections mix in
    one fused layer; an fp32 layer runs its modules for steps of more than FP32_MAX_ROWS rows (oneDNN's
    GEMM is the faster there), and gives the same tokens either way."""
    odd = make_model("deconly")
    odd.decoder[0].mlp_norm.eps = 1e-3
    assert [type(m) is FusedDecoderLayer for m in encore.optimize(odd).decoder] == [False, True]
    mixed = encore.optimize(make_model("deconly"), quantize="int4", policy={"decoder.0.mlp.*": "none"})
    assert all(type(m) is FusedDecoderLayer for m in mixed.decoder)
    both = encore.optimize(make_model("deconly"), quantize="int4", policy={"decoder.*.mlp.*": "int8"})
    assert all(type(m) is FusedDecoderLayer for m in both.decoder) == bool(layer_c.library().encore_int8_has_vnni())
    fp32 = encore.optimize(make_model("deconly"))
    assert [m.max_rows for m in fp32.decoder] == [fused_module.FP32_MAX_ROWS] * 2 and mixed.decoder[1].max_rows is None
    ids = torch.randint(3, 512, (fused_module.FP32_MAX_ROWS + 1, 5), generator=torch.Generator().manual_seed(6))
    wide = fp32.generate(ids, max_new_tokens=4)
    assert torch.equal(wide[:2], fp32.generate(ids[:2], max_new_tokens=4))


def assert_like_its_modules(fused) -> None:
    """The fused model's logits and K/V over 7 decode steps of padded rows equal those of a copy whose
    fused layers run their modules one by one: to float rounding, which now and then moves one
    activation across an int8 rounding boundary (that row's logits then move by a few hundredths of
    their scale; scaling the attention by 1.3 moves them by 12-16%)."""
    modules = copy.deepcopy(fused)
    for layer in modules.decoder:  # the same modules, called one by one
        layer.forward = functools.partial(layer._eager.forward, layer)
    ids = torch.randint(3, 512, (3, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, 6:] = 0
    exact = []  # per step and row: equal to float rounding

    def assert_close_but_rare_flips(got: torch.Tensor, want: torch.Tensor, rows: int = 0) -> None:
        scale = want.abs().max().item()
        off = (got - want).abs()
        assert off.max() <= 0.05 * scale, f"off by {off.max() / scale:.1%} of the scale"
        exact.extend((off.flatten(1).amax(1) <= 1e-4 * scale).tolist() if rows else [])

    with torch.inference_mode():
        (want, want_cache), (got, got_cache) = modules.prefill(ids, mask, 8), fused.prefill(ids, mask, 8)
        for _ in range(7):
            assert_close_but_rare_flips(got, want, rows=3)
            for side in ("k", "v"):
                assert_close_but_rare_flips(getattr(got_cache, side), getattr(want_cache, side))
            tokens = want.argmax(-1)
            want, got = modules.decode_step(tokens, want_cache), fused.decode_step(tokens, got_cache)
    assert sum(exact) >= 0.25 * len(exact), exact


def test_the_plain_c_layer_equals_its_modules(monkeypatch):
    """Machines without AVX-512 build csrc/layer.c's plain C paths (attention, int4 products,
    activations, fp16 conversions): the same results. (int8 layers are not fused there: fbgemm's modules are faster.)"""
    plain = layer_c.library(("-O2", "-fopenmp", "-shared", "-fPIC"))  # no -march: no vector paths
    assert plain is not None and not plain.encore_int8_has_vnni()
    monkeypatch.setattr(layer_c, "library", lambda *flags: plain)
    for arch, kv_dtype in (("encdec", None), ("deconly", None), ("deconly", torch.float16)):
        # the prefill's attention pinned (not the machine's measured choice): which int8 roundings flip
        # between the plain C products and the modules' vector ones depends on the data it makes
        attention = "bf16" if fused_module.bf16_attention_available() else "fp32"
        # (the token table kept fp32: int8 rows put the inputs on a grid where the two paths' roundings tie)
        model = encore.optimize(make_model(arch, **GEMMA_LIKE), quantize="int4", kv_dtype=kv_dtype,
                                prefill_attention=attention, policy={"embed": "none"})  # fmt: skip
        assert all(layer._lib is plain for layer in model.decoder)
        assert_like_its_modules(model)  # fp16 K/V: the plain fp16 conversions against F16C's


@pytest.mark.parametrize("quantize", [None, "int4"])
def test_half_precision_kv_cache(arch, quantize):
    """optimize(kv_dtype=torch.float16): caches hold K/V in fp16 (half the bytes), written and read by the
    fused kernels (modules and whole layers), the cross K/V too; the logits stay within fp16's rounding
    of the fp32 cache's, and the engine gives generate's tokens (fp32 weights)."""
    overrides = {} if arch == "deconly" else {"merged_attention": True, **GEMMA_LIKE}
    model = make_model(arch, **overrides)
    full = encore.optimize(copy.deepcopy(model), quantize=quantize, kv_dtype=torch.float32)
    assert full.kv_dtype == torch.float32
    half = encore.optimize(model, quantize=quantize)  # the default where the fused kernels run ("auto")
    assert half.kv_dtype == torch.float16 and optimized(half)["kv_dtype"] == "torch.float16"
    ids = torch.randint(3, 512, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.inference_mode():
        (want, want_cache), (got, got_cache) = full.prefill(ids, mask, 6), half.prefill(ids, mask, 6)
        assert got_cache.k.dtype == torch.float16 and got_cache.nbytes * 2 == want_cache.nbytes
        for _ in range(5):
            tolerance = (5e-3 if quantize is None else 5e-2) * want.abs().max().item()
            torch.testing.assert_close(got, want, rtol=0, atol=tolerance)
            tokens = want.argmax(-1)
            want, got = full.decode_step(tokens, want_cache), half.decode_step(tokens, got_cache)
    assert encore.deoptimize(copy.deepcopy(half)).kv_dtype == torch.float32
    engine = Engine(half, max_batch=2, max_input_len=9, max_new_tokens=6)
    assert engine.cache.k.dtype == torch.float16
    if quantize is not None:  # (int4's rounding of activations can turn a float-order difference into a token)
        return
    rows = [ids[0].tolist(), ids[1, :5].tolist()]
    for r, got in zip(rows, engine_tokens(engine, rows, 6)):
        alone = half.generate(torch.tensor([r]), max_new_tokens=6, do_sample=False, eos_token_id=None)
        assert got == alone[0].tolist()


def test_half_precision_kv_cache_needs_the_fused_kernels():
    with pytest.raises(ValueError, match="kv_dtype=torch.float16 is the fused CPU kernels'"):
        encore.optimize(make_model("deconly"), fused=False, kv_dtype=torch.float16)
    with pytest.raises(ValueError, match="kv_dtype must be 'auto', None, torch.float32 or torch.float16"):
        encore.optimize(make_model("deconly"), kv_dtype=torch.bfloat16)
    assert encore.optimize(make_model("deconly"), fused=False).kv_dtype == torch.float32  # "auto" without them


def test_without_a_compiler_encore_says_once_which_kernels_it_lacks(monkeypatch, capsys):
    """No C compiler: the kernels are not built (their callers take the PyTorch paths), and each is named
    once on stderr with how to get it."""
    from encore.model import native

    monkeypatch.setattr(native, "compiler", lambda: None)
    monkeypatch.setattr(native, "_SAID", set())
    monkeypatch.delenv("ENCORE_QUIET", raising=False)
    assert native.load("int8") is None and native.load("int8") is None and native.load("attend") is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        len(lines) == 2 and "csrc/int8.c is not built: no C compiler" in lines[0] and "apt-get install gcc" in lines[0]
    )
