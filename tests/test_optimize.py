"""encore.optimize: visible, undoable kernel swaps (oneDNN fp32, int8) with the results of the plain model."""

import platform

import pytest
import torch
from conftest import SeenOps, make_model

import encore
from encore.infer.optimize import optimized
from encore.model.fused_rows import FusedInt8Linear
from encore.model.kernels import (
    Int8Embedding,
    Int8Linear,
    OneDNNLinear,
    int8_available,
    onednn_available,
    rows_only_available,
)
from encore.model.layers import Linear

X86_ONEDNN = onednn_available() and platform.machine().lower() in ("x86_64", "amd64")


def args_of(model, generator_seed=1):
    ids = torch.randint(3, 512, (2, 7), generator=torch.Generator().manual_seed(generator_seed))
    return (ids, ids[:, :5]) if model.config.arch == "encdec" else (ids,)


def projections(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, (Linear, OneDNNLinear, Int8Linear))]


@pytest.mark.skipif(not X86_ONEDNN, reason="oneDNN is encore's fp32 CPU kernel on x86-64 builds with it")
def test_onednn_swap_is_visible_exact_and_undone(arch):
    model = make_model(arch, tie_embeddings=True)
    args = args_of(model)
    with torch.inference_mode(), SeenOps() as seen:
        reference = model(*args)
    assert "mkldnn._linear_pointwise" not in seen.ops
    originals = {name: m for name, m in model.named_modules() if isinstance(m, Linear)}
    assert encore.optimize(model) is model
    swapped = projections(model)
    assert all(isinstance(m, OneDNNLinear) for m in swapped) and len(swapped) == len(originals) + 1  # + tied head
    assert "kernel=onednn-fp32" in repr(model)
    assert optimized(model)["quantize"] is None
    with torch.inference_mode(), SeenOps() as seen:
        fast = model(*args)
    assert "mkldnn._linear_pointwise" in seen.ops and "aten.mm" not in seen.ops
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="deoptimize"):
        model.save_pretrained("/tmp/never-written")

    encore.deoptimize(model)
    assert {name: m for name, m in model.named_modules() if isinstance(m, Linear)} == originals  # the same objects
    assert model.lm_head is None and not any(isinstance(m, OneDNNLinear) for m in model.modules())
    model.train().requires_grad_(True)
    loss = model(*args).float().square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.dim() == 2)


@pytest.mark.skipif(not X86_ONEDNN, reason="needs oneDNN")
def test_onednn_linear_keeps_autograd_on_f_linear():
    weight = torch.nn.Parameter(torch.randn(8, 4))
    layer = OneDNNLinear(weight)
    x = torch.randn(3, 4, requires_grad=True)
    with SeenOps() as seen:
        layer(x).sum().backward()
    assert "mkldnn._linear_pointwise" not in seen.ops and weight.grad is not None and x.grad is not None


@pytest.mark.skipif(not int8_available(), reason="needs torch's x86 / fbgemm quantized engine")
def test_int8_numerics_and_swaps(arch):
    model = make_model(arch, tie_embeddings=True)
    with torch.no_grad():  # weights of a trained model's scale (the conftest models are spread wide on purpose)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.05)
    args = args_of(model)
    with torch.inference_mode():
        reference = model(*args)
    n_linear = len([m for m in model.modules() if isinstance(m, Linear)])
    encore.optimize(model, quantize="int8")
    int8 = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(int8) == n_linear + 1 and isinstance(model.lm_head, Int8Linear)  # the tied head too
    assert "kernel=int8-dynamic" in repr(model)
    with torch.inference_mode(), SeenOps() as seen:
        quantized = model(*args)
    if rows_only_available():  # each weight once, csrc/int8.c's rows: no fbgemm call at all
        assert all(m._packed is None for m in int8) and not any(op.startswith("quantized.") for op in seen.ops)
    else:
        assert "quantized.linear_with_input_q_dq_qweight_dq_output_fp32" in seen.ops  # several rows: a scale per row
    # first-step logits close to fp32: relative error of a few percent
    error = (quantized - reference).norm() / reference.norm()
    assert error < 0.05, f"int8 logits are {error:.3f} off fp32"
    # (top-token agreement over 14 positions of a random model turns on near-ties; the real model's
    # agreement and perplexity are measured in docs/engine.md)
    layer = int8[0]
    one = torch.randn(1, layer.in_features)
    with torch.inference_mode(), SeenOps() as seen:
        dynamic = Int8Linear.from_quantized(*layer.quantized())(one)  # fbgemm's packed copy: its dynamic linear
    assert "quantized.linear_dynamic" in seen.ops
    if isinstance(layer, FusedInt8Linear) or layer._packed is None:  # csrc/int8.c: the same, to rounding
        with torch.inference_mode():
            rows = layer(one)
        assert (rows - dynamic).norm() / dynamic.norm() < 0.02
    x = torch.randn(4, layer.in_features)
    x[0] *= 1000  # a token with massive activations
    with torch.inference_mode():
        together = layer(x)
        pairs = torch.cat([layer(x[i : i + 2]) for i in (0, 2)])
    torch.testing.assert_close(together, pairs, rtol=0, atol=0)  # a row's result does not depend on the others
    exact = x @ model.embed.weight.T if layer is model.lm_head else None
    if exact is not None:  # the other rows keep their own precision
        assert ((together[1:] - exact[1:]).norm() / exact[1:].norm()) < 0.05
    encore.deoptimize(model)
    with torch.inference_mode():
        torch.testing.assert_close(model(*args), reference)


def test_unit_rows_in_c_equals_the_eager_scaling(monkeypatch):
    """csrc/rows.c's rows onto [-1, 1] are the eager abs / amax / division, bit for bit (a zero row, a K off
    the 16-wide grid, one huge row); so Int8Linear's products are unchanged."""
    from encore.model import kernels

    if kernels._rows_library() is None:
        pytest.skip("csrc/rows.c needs a C compiler on Linux")
    x = torch.randn(40, 70)
    x[3] = 0.0
    x[5] *= 1e4
    unit, peak = kernels.unit_rows(x)
    want_peak = x.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12)
    assert torch.equal(peak, want_peak) and torch.equal(unit, x / want_peak)
    if int8_available():
        layer = Int8Linear(torch.randn(24, 70) * 0.05)
        few = x[: kernels.MANY_ROWS - 8]  # fbgemm's per-row path (from MANY_ROWS rows: bf16 GEMMs where built)
        with torch.inference_mode():
            fast = layer(few)
            monkeypatch.setattr(kernels, "_rows_library", lambda: None)
            assert torch.equal(fast, layer(few))


def test_optimize_refuses_what_it_cannot_do():
    model = make_model("encdec")
    with pytest.raises(ValueError, match="quantize must be one of"):
        encore.optimize(model, quantize="int2")
    with pytest.raises(ValueError, match="linear must be one of"):
        encore.optimize(model, linear="mkl")
    with pytest.raises(ValueError, match="int8.*CPU path"):
        encore.optimize(model, dtype=torch.bfloat16, quantize="int8")
    assert not any(isinstance(m, (OneDNNLinear, Int8Linear)) for m in model.modules())


def test_aten_keeps_the_plain_model():
    """linear="aten": every projection stays F.linear (torch's BLAS), so no layer's decode step moves
    into C's fp32 products either."""
    from encore.model.fused_layer import FusedDecoderLayer

    model = make_model("deconly")
    encore.optimize(model, linear="aten")
    assert projections(model) and all(type(m) is Linear for m in projections(model))
    assert not any(isinstance(m, FusedDecoderLayer) for m in model.modules())
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.skipif(not int8_available(), reason="int8 needs fbgemm")
@pytest.mark.parametrize("arch", ["encdec", "deconly"])
def test_without_originals_the_fp32_weights_are_freed_and_the_model_stays_quantized(arch):
    """`keep_originals=False` (the CLI's, the server's and the bench's): the same model, its quantized
    projections' fp32 modules gone (freed), and `deoptimize` leaves them quantized."""
    import gc
    import weakref

    kept, freed = make_model(arch, tie_embeddings=False), make_model(arch, tie_embeddings=False)
    args = args_of(kept)
    up = weakref.ref(freed.get_submodule("decoder.0.mlp.up").weight)
    table = weakref.ref(freed.embed.weight)
    encore.optimize(kept, quantize="int8")
    encore.optimize(freed, quantize="int8", keep_originals=False)
    gc.collect()
    assert up() is None and table() is None  # nothing holds the original weights (the token table's either)
    with torch.inference_mode():
        torch.testing.assert_close(freed(*args), kept(*args), rtol=0, atol=0)
    encore.deoptimize(freed)
    assert isinstance(freed.get_submodule("decoder.0.mlp.up"), Int8Linear)  # no fp32 weights to put back
    assert not any(type(m) is Linear for m in freed.modules())
    assert isinstance(freed.embed, Int8Embedding)
    encore.deoptimize(kept)
    assert type(kept.get_submodule("decoder.0.mlp.up")) is Linear and type(kept.embed) is torch.nn.Embedding


@pytest.mark.parametrize("kind", ["plain", "scaled", "end-of-image"])
def test_int8_token_tables_keep_each_row_to_its_rounding(kind):
    """`Int8Embedding`: a quarter of the table's bytes, each looked-up row within half a level of the
    fp32 row (the original's sqrt(d) and end-of-image vector kept), for the model's dtype and device."""
    from encore.model.layers import EoiEmbedding, ScaledEmbedding

    torch.manual_seed(0)
    table = {"plain": lambda: torch.nn.Embedding(300, 64), "scaled": lambda: ScaledEmbedding(300, 64),
             "end-of-image": lambda: EoiEmbedding(300, 64, eoi_id=7)}[kind]()  # fmt: skip
    if kind == "end-of-image":
        torch.nn.init.normal_(table.eoi_embedding)
    q = Int8Embedding.quantize(table)
    assert q.qweight.nbytes * 4 == table.weight.nbytes and q.weight.shape == table.weight.shape
    assert q.weight.dtype == torch.float32 and q.weight.untyped_storage().nbytes() == 64 * 4  # one row, viewed
    ids = torch.tensor([[0, 7, 299, 7], [5, 6, 8, 9]])
    factor = 64**0.5 if kind != "plain" else 1.0
    level = (table.weight.abs().amax(dim=1)[ids] / 127 * factor)[..., None]
    with torch.no_grad():
        assert ((q(ids) - table(ids)).abs() <= level / 2 + 1e-6).all()


def test_a_table_the_tied_head_still_reads_stays_fp32():
    """A tied head no kernel took (`linear="aten"`, `policy={"lm_head": "none"}`) reads the embedding's
    weight itself: that table is not quantized, and the logits are the plain head's."""
    model = make_model("deconly", tie_embeddings=True)
    assert model.lm_head is None
    args = args_of(model)
    with torch.inference_mode():
        want = model(*args)
        encore.optimize(model, quantize="int8", linear="aten", policy={"lm_head": "none"})
        assert model.lm_head is None and type(model.embed) is torch.nn.Embedding
        torch.testing.assert_close(model(*args), want, rtol=0, atol=0.25 * want.abs().max().item())
