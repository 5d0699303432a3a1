"""int4 weights (`encore.optimize(quantize="int4")`, `Int4Linear`) and quantized checkpoints."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import encore
from encore.config import ModelConfig
from encore.infer.engine import Engine
from encore.model import int4
from encore.model.int4 import CHUNK, Int4Linear, dequantize_int4, quantize_int4
from encore.model.io import build, load
from encore.model.kernels import Int8Linear

pytestmark = pytest.mark.skipif(not int4.int4_available(), reason="no C compiler for the int4 kernel")


def reference(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The kernel's arithmetic in torch: activations rounded to int8 per row and group, integer dot
    products per group, then both scales."""
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    group = k // scales.shape[1]
    xg = x.reshape(x.shape[0], k // group, group)
    sx = xg.abs().amax(-1, keepdim=True) / 127
    qx = torch.where(sx > 0, xg / sx, torch.zeros_like(xg)).round()
    packed = qweight.reshape(n, k // CHUNK, 1, CHUNK // 2)
    q = torch.cat([packed & 0x0F, packed >> 4], dim=2).reshape(n, k // group, group).double() - 8
    dots = torch.einsum("mgk,ngk->mng", qx.double(), q)  # exact integers
    return (dots * scales.double()[None] * sx.squeeze(-1).double()[:, None]).sum(-1).float()


def test_quantize_rounds_each_weight_to_its_nearest_level():
    torch.manual_seed(0)
    w = torch.randn(48, 256)
    qweight, scales = quantize_int4(w, 128)
    assert qweight.dtype == torch.uint8 and qweight.shape == (48, 128) and scales.shape == (48, 2)
    step = scales.abs().repeat_interleave(128, dim=1)
    error = (dequantize_int4(qweight, scales) - w).abs()
    inside = w.abs() <= 7 * step  # levels run -8..7 steps: the far side of the extreme may clip by < 1 step
    assert (error[inside] <= step[inside] / 2 + 1e-6).all() and (error <= step + 1e-6).all()
    # the largest magnitude of each group is exactly -8 levels (Q4_0's choice: the full range)
    extreme = w.view(48, 2, 128).gather(2, w.view(48, 2, 128).abs().argmax(2, keepdim=True)).squeeze(-1)
    assert torch.allclose(extreme, -8 * scales)
    zero_rows = quantize_int4(torch.zeros(4, 64), 64)  # an all-zero group: scale 0, no NaN
    assert (dequantize_int4(*zero_rows) == 0).all()


@pytest.mark.parametrize("rows,k,group", [(1, 1024, 128), (3, 512, 256), (5, 320, 64), (2, 192, 64)])
def test_kernel_equals_its_arithmetic_and_tracks_the_float_product(rows, k, group):
    torch.manual_seed(rows)
    w, x, bias = torch.randn(37, k) * 0.05, torch.randn(rows, k), torch.randn(37)
    layer = Int4Linear(w, bias, group_size=group)
    y = layer(x)
    expected = reference(x, layer.qweight, layer.scales) + bias
    assert torch.allclose(y, expected, rtol=1e-4, atol=1e-4)  # N=37: the 4-row tiles and the tail
    exact = x @ dequantize_int4(layer.qweight, layer.scales).T + bias
    assert (y - exact).norm() / exact.norm() < 0.02  # only the activations' int8 rounding
    assert layer(x.view(rows, 1, k)).shape == (rows, 1, 37)


def test_plain_c_path_equals_the_vnni_path():
    """Machines without AVX-512 VNNI run the same arithmetic in plain C."""
    path = int4.build_kernel(["-O2", "-fopenmp", "-shared", "-fPIC"])  # no -march: no VNNI intrinsics
    plain = int4.open_kernel(path)
    assert not plain.encore_int4_has_vnni()
    torch.manual_seed(1)
    layer = Int4Linear(torch.randn(21, 256), group_size=128)
    x = torch.randn(3, 256)
    got = int4.int4_linear(plain, x, layer.qweight, layer.scales, None)
    assert torch.allclose(got, reference(x, layer.qweight, layer.scales), rtol=1e-4, atol=1e-4)
    assert torch.allclose(got, layer(x), rtol=1e-4, atol=1e-4)


def test_bad_group_sizes_are_named():
    with pytest.raises(ValueError, match="do not divide into groups of 128"):
        quantize_int4(torch.randn(4, 192), 128)
    model = build(ModelConfig.preset("deconly-tiny"), seed=0)
    with pytest.raises(ValueError, match="group_size must be a positive multiple of 64"):
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
    assert all(k == "Int4Linear" for n, k in kinds.items() if not n.startswith("encoder."))
    assert "lm_head" in kinds and encore.infer.optimize.optimized(model)["group_size"] == 128
    encore.optimize(model, quantize="int4", policy={"lm_head": "int8", "encoder.*": "int4"})
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.encoder[0].attn.qkv, Int4Linear)
    narrow = build(config.replace(d_model=192, n_heads=3, n_kv_heads=3), seed=0)  # 192: groups of 64
    encore.optimize(narrow, quantize="int4", policy={"*": "int4"})
    assert narrow.encoder[0].attn.qkv.group_size == 64


@pytest.mark.parametrize("preset", ["encdec-tiny", "deconly-tiny"])
def test_engine_runs_int4_like_generate(preset):
    model = encore.optimize(build(ModelConfig.preset(preset), seed=0), quantize="int4")
    prompts = [[5, 9, 14, 30, 31], [7, 8, 9]]
    engine = Engine(model, max_batch=2, max_input_len=8, max_new_tokens=10)
    ids = [engine.add(p, max_new_tokens=10, eos_token_id=None) for p in prompts]
    got: dict[int, list[int]] = {i: [] for i in ids}
    while engine.has_work():
        for event in engine.step():
            got[event.request_id].append(event.token)
    for prompt, rid in zip(prompts, ids):
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None)
        assert got[rid] == ref[0].tolist()[: len(got[rid])] and len(got[rid]) == 10


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_quantized_checkpoint_loads_ready_without_rounding_again(tmp_path, monkeypatch, quantize):
    model = build(ModelConfig.preset("encdec-tiny"), seed=0)
    model.save_pretrained(tmp_path / "fp32")
    encore.optimize(model, quantize=quantize)
    ids = torch.randint(5, 300, (2, 9))
    before = model.generate(ids, max_new_tokens=12, do_sample=False)
    model.save_pretrained(tmp_path / "q")
    manifest = json.loads((tmp_path / "q" / "quantization.json").read_text())
    assert manifest["format"] == "encore-quantized" and manifest["modules"]["lm_head"]["kind"] == quantize
    state = load_file(str(tmp_path / "q" / "model.safetensors"))
    assert "lm_head.weight" not in state and state["lm_head.qweight"].dtype == (
        torch.uint8 if quantize == "int4" else torch.int8
    )
    size = lambda d: (d / "model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "q") < 0.7 * size(tmp_path / "fp32")
    monkeypatch.setattr(int4, "quantize_int4", lambda *a: pytest.fail("re-quantized at load"))
    loaded = load(tmp_path / "q")
    assert torch.equal(loaded.generate(ids, max_new_tokens=12, do_sample=False), before)
    assert type(loaded.lm_head) is type(model.lm_head)
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


def test_cli_convert_quantize_then_generate(tmp_path):
    model = build(ModelConfig.preset("deconly-tiny"), seed=0)
    from encore.data.vocab import default_tokenizer

    model.tokenizer = default_tokenizer()
    model.save_pretrained(tmp_path / "fp32")
    run = lambda *a: subprocess.run([sys.executable, "-m", "encore", *a], capture_output=True, text=True)  # noqa: E731
    out = run("convert", "--model", str(tmp_path / "fp32"), "--out", str(tmp_path / "q4"), "--quantize", "int4")
    assert out.returncode == 0, out.stderr
    assert "int4" in out.stdout and (tmp_path / "q4" / "quantization.json").is_file()
    gen = run("generate", "--model", str(tmp_path / "q4"), "--input", "hello", "--max-new-tokens", "4")
    assert gen.returncode == 0, gen.stderr
    bad = run("convert", "--model", str(tmp_path / "fp32"), "--out", str(tmp_path / "x"), "--group-size", "64")
    assert bad.returncode != 0 and "--group-size: only with --quantize int4" in bad.stderr
