"""int4 weights (`encore.optimize(quantize="int4")`, `Int4Linear`) and quantized checkpoints."""

import json

import pytest
import torch
from conftest import engine_tokens, run_cli
from safetensors.torch import load_file, save_file

import encore
from encore.config import ModelConfig
from encore.infer.engine import Engine
from encore.model import int4
from encore.model.int4 import CHUNK, Int4Linear, dequantize_int4, quantize_int4
from encore.model.io import build, load
from encore.model.kernels import Int8Linear
from encore.model.native import cpu_flags

pytestmark = pytest.mark.skipif(not int4.int4_available(), reason="no C compiler for the int4 kernel")


def reference(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins=None) -> torch.Tensor:
    """The kernel's arithmetic in torch: activations rounded to int8 per row and group, integer dot
    products per group, then both scales (and the groups' minimums times the rounded activations' sums)."""
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    group = k // scales.shape[1]
    xg = x.reshape(x.shape[0], k // group, group)
    sx = xg.abs().amax(-1, keepdim=True) / 127
    qx = torch.where(sx > 0, xg / sx, torch.zeros_like(xg)).round()
    packed = qweight.reshape(n, k // CHUNK, 1, CHUNK // 2)
    q = torch.cat([packed & 0x0F, packed >> 4], dim=2).reshape(n, k // group, group).double()
    dots = torch.einsum("mgk,ngk->mng", qx.double(), q)  # exact integers
    low = -8 * scales if mins is None else mins
    terms = dots * scales.double()[None] + qx.double().sum(-1)[:, None] * low.double()[None]  # fp16 -> exact
    return (terms * sx.squeeze(-1).double()[:, None]).sum(-1).float()


def test_quantize_rounds_each_weight_to_its_nearest_level():
    torch.manual_seed(0)
    w = torch.randn(48, 256)
    qweight, scales, _ = quantize_int4(w, 128, symmetric=True)
    assert qweight.dtype == torch.uint8 and qweight.shape == (48, 128) and scales.shape == (48, 2)
    assert scales.dtype == torch.float16  # as llama.cpp stores them
    step = scales.float().abs().repeat_interleave(128, dim=1)
    error = (dequantize_int4(qweight, scales) - w).abs()
    inside = w.abs() <= 7 * step  # levels run -8..7 steps: the far side of the extreme may clip by < 1 step
    assert (error[inside] <= step[inside] / 2 + 1e-6).all() and (error <= step + 1e-6).all()
    # the largest magnitude of each group is exactly -8 levels (Q4_0's choice: the full range)
    extreme = w.view(48, 2, 128).gather(2, w.view(48, 2, 128).abs().argmax(2, keepdim=True)).squeeze(-1)
    assert torch.allclose(extreme, -8 * scales.float(), rtol=1e-3)  # the fp16 scale's rounding
    zero_rows = quantize_int4(torch.zeros(4, 64), 64, symmetric=True)  # an all-zero group: scale 0, no NaN
    assert (dequantize_int4(*zero_rows) == 0).all()


def test_asymmetric_levels_span_each_group():
    """symmetric=False: each group's minimum and maximum are levels 0 and 15 (Q4_1's choice); a weight
    already on such a grid (a Q4_1 file's, dequantized) comes back exactly."""
    torch.manual_seed(0)
    w = torch.randn(8, 128)
    qweight, scales, mins = quantize_int4(w, 32, symmetric=False)
    assert scales.shape == mins.shape == (8, 4)
    back = dequantize_int4(qweight, scales, mins)
    assert (back - w).abs().max() <= scales.float().max() * 0.51  # half a level (the fp16 rounding of scale, min)
    torch.testing.assert_close(back.view(8, 4, 32).amin(-1), w.view(8, 4, 32).amin(-1), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(back.view(8, 4, 32).amax(-1), w.view(8, 4, 32).amax(-1), rtol=1e-3, atol=1e-3)
    again = dequantize_int4(*quantize_int4(back, 32, symmetric=False))
    torch.testing.assert_close(again, back, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "rows,k,group,symmetric",
    [(1, 1024, 128, True), (3, 512, 256, True), (5, 320, 64, True), (2, 192, 64, True), (1, 576, 32, True),
     (3, 576, 32, False), (2, 512, 128, False)],
)  # fmt: skip
def test_kernel_equals_its_arithmetic_and_tracks_the_float_product(rows, k, group, symmetric):
    torch.manual_seed(rows)
    w, x, bias = torch.randn(37, k) * 0.05, torch.randn(rows, k), torch.randn(37)
    layer = Int4Linear(w, bias, group_size=group, symmetric=symmetric)
    assert layer.symmetric == symmetric
    y = layer(x)
    expected = reference(x, layer.qweight, layer.scales, layer.mins) + bias
    assert torch.allclose(y, expected, rtol=1e-4, atol=1e-4)  # N=37: the 4-row tiles and the tail
    exact = x @ dequantize_int4(layer.qweight, layer.scales, layer.mins).T + bias
    assert (y - exact).norm() / exact.norm() < 0.02  # only the activations' int8 rounding
    assert layer(x.view(rows, 1, k)).shape == (rows, 1, 37)


@pytest.mark.parametrize("group,symmetric", [(32, False), (32, True), (128, True), (64, False)])
def test_many_rows_without_bf16_go_through_the_fp32_weight(group, symmetric):
    """A CPU without bf16 products (AVX-512 VNNI without BF16, AVX2): from FP32_MANY_ROWS rows the weight
    is unpacked to fp32 exactly as the int4 levels say and oneDNN's fp32 GEMM runs the rows; fewer rows
    keep the int4 products."""
    torch.manual_seed(group)
    w, bias = torch.randn(45, 384) * 0.05, torch.randn(45)
    layer = Int4Linear(w, bias, group_size=group, symmetric=symmetric)
    levels = dequantize_int4(layer.qweight, layer.scales, layer.mins)
    assert torch.equal(int4.unpacked_weight(layer._lib, layer.qweight, layer.scales, layer.mins, torch.float32), levels)
    if not layer._fp32_many:
        pytest.skip("this CPU multiplies many rows in bf16 (or torch has no oneDNN)")
    x = torch.randn(int4.FP32_MANY_ROWS, 384)
    torch.testing.assert_close(layer(x), x @ levels.T + bias, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x.view(8, 8, 384)), (x @ levels.T + bias).view(8, 8, 45), rtol=1e-5, atol=1e-5)
    few = x[: int4.FP32_MANY_ROWS - 1]
    torch.testing.assert_close(layer(few), reference(few, layer.qweight, layer.scales, layer.mins) + bias,
                               rtol=1e-4, atol=1e-4)  # fmt: skip


@pytest.mark.skipif(not int4.bf16_many_rows(), reason="the many-row bf16 path needs AVX512-BF16 and oneDNN")
@pytest.mark.parametrize("group,symmetric", [(32, False), (32, True), (128, True), (64, False)])
def test_many_rows_go_through_the_bf16_weight(group, symmetric):
    """MANY_ROWS rows or more (a prefill): the weight unpacked to bf16 exactly as the int4 levels say (to
    bf16's rounding), multiplied by oneDNN; within bf16's rounding of the float product of the levels,
    and of the int4 products; fewer rows keep the products."""
    torch.manual_seed(group)
    w, bias = torch.randn(45, 384) * 0.05, torch.randn(45)
    layer = Int4Linear(w, bias, group_size=group, symmetric=symmetric)
    levels = dequantize_int4(layer.qweight, layer.scales, layer.mins)
    unpacked = int4.unpacked_weight(layer._lib, layer.qweight, layer.scales, layer.mins, torch.bfloat16)
    assert unpacked.dtype == torch.bfloat16 and torch.equal(unpacked, levels.to(torch.bfloat16))
    x = torch.randn(int4.MANY_ROWS, 384)
    exact = x @ levels.T + bias
    many = layer(x)
    assert (many - exact).norm() / exact.norm() < 0.006  # bf16 activations and outputs
    few = layer(x[: int4.MANY_ROWS - 1])
    torch.testing.assert_close(
        few, reference(x[:-1], layer.qweight, layer.scales, layer.mins) + bias, rtol=1e-4, atol=1e-4
    )
    assert (many[:-1] - few).norm() / few.norm() < 0.02


@pytest.mark.parametrize("group,symmetric", [(32, False), (32, True), (128, True), (64, False)])
def test_many_rows_on_amx_bf16_tiles_equal_the_bf16_product(group, symmetric):
    """On a CPU with AMX a prefill's int4 product runs on the bf16 tiles in one C call (csrc/rows.c): the
    exact fp32 product of the bf16 activations and the bf16 weight `unpacked_weight` unpacks, the weight
    never written out whole."""
    from encore.model import kernels

    if not (int4.bf16_many_rows() and kernels.int4_amx_bf16_rows(384, 48, group)):
        pytest.skip("needs AMX bf16 tiles")
    torch.manual_seed(group)
    layer = Int4Linear(torch.randn(48, 384) * 0.05, torch.randn(48), group_size=group, symmetric=symmetric)
    weight = int4.unpacked_weight(layer._lib, layer.qweight, layer.scales, layer.mins, torch.bfloat16).float()
    for rows in (int4.MANY_ROWS, 40, 600):
        x = torch.randn(rows, 384)
        exact = x.bfloat16().float() @ weight.T + layer.bias
        torch.testing.assert_close(layer(x), exact, rtol=1e-4, atol=1e-4)
    assert not kernels.int4_amx_bf16_rows(384, 45, group) and not kernels.int4_amx_bf16_rows(352, 48, 32)


@pytest.mark.parametrize("march", ["plain", "x86-64-v3"])
def test_plain_c_and_avx2_paths_equal_the_vnni_path(march):
    """Machines without AVX-512 VNNI run the same arithmetic: AVX2's vpmaddubsw (x86-64-v3: AMD Zen 2 / 3),
    or plain C."""
    if march == "x86-64-v3" and " avx2" not in cpu_flags():
        pytest.skip("needs an AVX2 CPU")
    flags = ["-O2"] if march == "plain" else ["-O3", f"-march={march}"]  # no -march: no SIMD intrinsics
    lib = int4.open_kernel(int4.build_kernel([*flags, "-fopenmp", "-shared", "-fPIC"]))
    assert not lib.encore_int4_has_vnni() and lib.encore_int4_simd() == (0 if march == "plain" else 1)
    assert lib.encore_int4_to_bf16(None, None, None, 0, 0, 32, None) == -2  # no AVX512-BF16: no bf16 path
    torch.manual_seed(1)
    for group, symmetric, rows in ((128, True, 3), (32, False, 3), (64, False, 5), (32, True, 1)):
        layer = Int4Linear(torch.randn(21, 256), group_size=group, symmetric=symmetric)
        x = torch.randn(rows, 256)
        got = int4.int4_linear(lib, x, layer.qweight, layer.scales, None, layer.mins)
        assert torch.allclose(got, reference(x, layer.qweight, layer.scales, layer.mins), rtol=1e-4, atol=1e-4)
        assert torch.allclose(got, layer(x), rtol=1e-4, atol=1e-4)


def test_bad_group_sizes_are_named():
    with pytest.raises(ValueError, match="do not divide into groups of 128"):
        quantize_int4(torch.randn(4, 192), 128)
    model = build(ModelConfig.preset("deconly-tiny"), seed=0)
    with pytest.raises(ValueError, match="group_size must be 32 or a positive multiple of 64"):
        encore.optimize(model, quantize="int4", group_size=100)
    with pytest.raises(ValueError, match="policy: each value must be one of"):
        encore.optimize(model, quantize="int4", policy={"lm_head": "int2"})
    with pytest.raises(ValueError, match="a quantization policy needs"):
        encore.optimize(model, policy={"lm_head": "int8"})


def test_default_policy_and_overrides():
    config = ModelConfig.preset("encdec-tiny")
    model = encore.optimize(build(config, seed=0), quantize="int4")
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, Int4Linear | Int8Linear)}
    assert all(k == "Int8Linear" for n, k in kinds.items() if n.startswith("encoder."))  # prefill-only: int8
    assert kinds.pop("lm_head") in ("Int8Linear", "FusedInt8Linear")  # the head too (docs/engine.md)
    assert all(k == "Int4Linear" for n, k in kinds.items() if not n.startswith("encoder."))
    settings = encore.infer.optimize.optimized(model)
    assert settings["group_size"] == 32 and settings["symmetric"] is False  # llama.cpp's Q4_1 layout
    assert model.decoder[0].mlp.up.group_size == 32 and not model.decoder[0].mlp.up.symmetric
    encore.optimize(model, quantize="int4", policy={"lm_head": "int4", "encoder.*": "int4"})
    assert isinstance(model.lm_head, Int4Linear) and isinstance(model.encoder[0].attn.qkv, Int4Linear)
    narrow = build(config.replace(d_model=192, n_heads=3, n_kv_heads=3), seed=0)  # 192: groups of 64
    encore.optimize(narrow, quantize="int4", policy={"*": "int4"}, group_size=128)
    assert narrow.encoder[0].attn.qkv.group_size == 64


@pytest.mark.parametrize("preset", ["encdec-tiny", "deconly-tiny"])
def test_engine_runs_int4_like_generate(preset):
    model = encore.optimize(build(ModelConfig.preset(preset), seed=0), quantize="int4")
    prompts = [[5, 9, 14, 30, 31], [7, 8, 9]]
    engine = Engine(model, max_batch=2, max_input_len=8, max_new_tokens=10)
    for prompt, got in zip(prompts, engine_tokens(engine, prompts, 10)):
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None)
        assert got == ref[0].tolist()[: len(got)] and len(got) == 10


@pytest.mark.parametrize("quantize", ["int8", "int4", "int4-asym32"])
def test_quantized_checkpoint_loads_ready_without_rounding_again(tmp_path, monkeypatch, quantize):
    model = build(ModelConfig.preset("encdec-tiny"), seed=0)
    model.save_pretrained(tmp_path / "fp32")
    asym = quantize == "int4-asym32"
    quantize = "int4" if asym else quantize
    settings = {"group_size": 128, "symmetric": True} if quantize == "int4" and not asym else {}
    encore.optimize(model, quantize=quantize, **settings)  # int4: symmetric groups of 128; asym32: the defaults
    ids = torch.randint(5, 300, (2, 9))
    before = model.generate(ids, max_new_tokens=12, do_sample=False)
    model.save_pretrained(tmp_path / "q")
    manifest = json.loads((tmp_path / "q" / "quantization.json").read_text())
    up = "decoder.0.mlp.up"
    assert manifest["format"] == "encore-quantized" and manifest["modules"][up]["kind"] == quantize
    assert manifest["modules"]["lm_head"]["kind"] == "int8"  # int4's default policy keeps the head int8
    assert manifest["modules"]["embed"] == {"kind": "int8-embedding"}  # the token table as int8 rows too
    state = load_file(str(tmp_path / "q" / "model.safetensors"))
    assert "lm_head.weight" not in state and state["lm_head.qweight"].dtype == torch.int8
    assert state[f"{up}.qweight"].dtype == (torch.uint8 if quantize == "int4" else torch.int8)
    size = lambda d: (d / "model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "q") < 0.7 * size(tmp_path / "fp32")
    monkeypatch.setattr(int4, "quantize_int4", lambda *a: pytest.fail("re-quantized at load"))
    loaded = load(tmp_path / "q")
    assert torch.equal(loaded.generate(ids, max_new_tokens=12, do_sample=False), before)
    encore.optimize(loaded)  # what every CLI command does to a loaded model: the kernels' formats stay
    assert torch.equal(loaded.generate(ids, max_new_tokens=12, do_sample=False), before)
    assert type(loaded.lm_head) is type(model.lm_head) and type(loaded.embed) is type(model.embed)
    assert torch.equal(loaded.embed.qweight, model.embed.qweight)
    if quantize == "int4":
        symmetric = not asym
        assert manifest["modules"][up] == {
            "kind": "int4",
            "group_size": 128 if symmetric else 32,
            "symmetric": symmetric,
        }
        loaded_up, model_up = loaded.get_submodule(up), model.get_submodule(up)
        assert torch.equal(loaded_up.scales, model_up.scales) and loaded_up.symmetric == symmetric
        assert symmetric or torch.equal(loaded_up.mins, model_up.mins)
    with pytest.raises(ValueError, match="pass|deoptimize"):
        loaded.save_pretrained(tmp_path / "hf", format="hf")
    loaded.save_pretrained(tmp_path / "again")  # a loaded quantized model saves as it is
    assert torch.equal(load(tmp_path / "again").generate(ids, max_new_tokens=12, do_sample=False), before)


def test_quantized_checkpoint_errors_are_named(tmp_path):
    model = encore.optimize(build(ModelConfig.preset("deconly-tiny"), seed=0), quantize="int4")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="runs on the CPU in float32"):
        load(tmp_path, dtype=torch.bfloat16)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "mlp_dim": config["mlp_dim"] * 2}))
    with pytest.raises(ValueError, match=r"mlp\.(up|gate|down)\.qweight holds a \[\d+, \d+\] projection"):
        load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    manifest = json.loads((tmp_path / "quantization.json").read_text())
    manifest["modules"]["layers.0.nothing"] = {"kind": "int4", "group_size": 128}
    (tmp_path / "quantization.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="layers.0.nothing is not a projection"):
        load(tmp_path)
    asym = encore.optimize(build(ModelConfig.preset("deconly-tiny"), seed=0), quantize="int4")  # Q4_1: mins
    asym.save_pretrained(tmp_path / "asym")
    state = load_file(str(tmp_path / "asym" / "model.safetensors"))
    save_file(
        {k: v for k, v in state.items() if k != "decoder.0.mlp.up.mins"}, str(tmp_path / "asym" / "model.safetensors")
    )
    with pytest.raises(
        ValueError, match=r"asymmetric int4 module decoder\.0\.mlp\.up has no tensor decoder\.0\.mlp\.up\.mins"
    ):
        load(tmp_path / "asym")
    int8 = encore.optimize(build(ModelConfig.preset("deconly-tiny"), seed=0), quantize="int8")
    int8.save_pretrained(tmp_path / "int8")
    state = load_file(str(tmp_path / "int8" / "model.safetensors"))
    state["decoder.0.mlp.up.scales"] = state["decoder.0.mlp.up.scales"][:-1]  # one row short
    save_file(state, str(tmp_path / "int8" / "model.safetensors"))
    with pytest.raises(
        ValueError, match=r"quantized module decoder\.0\.mlp\.up: int8 weight \[\d+, \d+\] .* got scales"
    ):
        load(tmp_path / "int8")


def test_cli_convert_quantize_then_generate(tmp_path, capsys):
    """`encore convert --quantize int4`, then `encore generate` on the quantized checkpoint."""
    model = build(ModelConfig.preset("deconly-tiny"), seed=0)
    from encore.data.vocab import default_tokenizer

    model.tokenizer = default_tokenizer()
    model.save_pretrained(tmp_path / "fp32")
    fp32, q4 = tmp_path / "fp32", tmp_path / "q4"
    code, out, err = run_cli(capsys, "convert", "--model", fp32, "--out", q4, "--quantize", "int4")
    assert code == 0, err
    assert "int4" in out and (q4 / "quantization.json").is_file()
    code, out, err = run_cli(capsys, "generate", "--model", q4, "--input", "hello", "--max-new-tokens", "4")
    assert code == 0, err
    half = ("--kv-cache-dtype", "fp16")  # the quantized checkpoint with a half-precision K/V cache
    code, out, err = run_cli(capsys, "generate", "--model", q4, "--input", "hello", "--max-new-tokens", "4", *half)
    assert code == 0 and out.strip(), err
    code, out, err = run_cli(capsys, "convert", "--model", fp32, "--out", tmp_path / "x", "--group-size", "64")
    assert code != 0 and "--group-size: only with --quantize int4" in err
    fast = ("--quantize", "int4", "--group-size", "128", "--symmetric")
    code, out, err = run_cli(capsys, "convert", "--model", fp32, "--out", tmp_path / "q4s", *fast)
    assert code == 0, err
    modules = json.loads((tmp_path / "q4s" / "quantization.json").read_text())["modules"]
    assert modules["decoder.0.mlp.up"] == {"kind": "int4", "group_size": 128, "symmetric": True}
