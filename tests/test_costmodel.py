"""The cost model against FLOPs / bytes worked out by hand, and against the real models."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from encore import DecoderOnly, EncoderDecoder, ModelConfig
from encore.bench.costmodel import (
    Machine,
    decode_step_cost,
    dtype_bytes,
    generation_cost,
    kv_cache_bytes,
    prefill_cost,
    weight_counts,
)
from encore.bench.machine import measure_machine
from encore.model.kernels import int8_available

# A config small enough to price by hand: d 8, 2 query heads / 1 KV head of 4, GELU MLP 16, vocab 100.
MICRO = dict(vocab_size=100, d_model=8, n_heads=2, n_kv_heads=1, head_dim=4, mlp_dim=16, mlp_type="gelu")
ENCDEC = ModelConfig(arch="encdec", n_encoder_layers=2, n_decoder_layers=1, **MICRO)
DECONLY = ModelConfig(arch="deconly", n_encoder_layers=0, n_decoder_layers=3, **MICRO)
# batch 1, input S = 3, output N = 3, fp32 (4 bytes)
B, S, N, BYTES = 1, 3, 3, 4

# Weight matrices (parameters):
#   self-attention: QKV 8 x (2 + 2*1)*4 = 128, output 2*4 x 8 = 64            -> 192
#   cross-attention (encdec): Q 8 x 8 = 64 + output 8 x 8 = 64                -> 128 (every step)
#                             KV 8 x 2*1*4 = 64                                -> 64  (once per request)
#   MLP (gelu, 2 matrices): 2 * 8 * 16                                         -> 256
#   LM head (tied embedding): 100 x 8                                          -> 800
# Attention FLOPs per (query, key) pair per layer: 4 * heads 2 * head_dim 4   -> 32
# K+V bytes per position per layer: 2 * 1 KV head * 4 * 4 bytes              -> 32


def test_weight_counts_by_hand():
    w = weight_counts(ENCDEC)
    assert (w.self_attn, w.cross_q_out, w.cross_kv, w.mlp, w.head) == (192, 128, 64, 256, 800)
    w = weight_counts(DECONLY)
    assert (w.self_attn, w.cross_q_out, w.cross_kv, w.mlp, w.head) == (192, 0, 0, 256, 800)


def test_encdec_by_hand():
    p = prefill_cost(ENCDEC, B, S, BYTES)
    # encoder: 2 * 3 tokens * 2 layers * (192 + 256)                 = 5376
    # cross K/V projection of the 3 encoder states: 2 * 3 * 64       = 384
    # decoder on BOS: 2 * 1 * (192 + 128 + 256)                      = 1152
    # attention: 32 * (encoder 2 layers * 3 * 3 + decoder 1 self + 3 cross) = 32 * 22 = 704
    # head on one position: 2 * 800                                  = 1600
    assert {q.name: q.flops for q in p.parts} == {
        "encoder": 5376,
        "cross_kv": 384,
        "decoder": 1152,
        "attention": 704,
        "head": 1600,
    }
    assert p.flops == 9216
    # bytes: weights 896*4 + 64*4 + 576*4 + 800*4; cache: write cross K/V (3) + BOS self K/V (1), read both back
    assert {q.name: q.bytes for q in p.parts} == {
        "encoder": 3584,
        "cross_kv": 256,
        "decoder": 2304,
        "attention": (3 + 1) * 32 * 2,
        "head": 3200,
    }
    assert p.bytes == 9600

    d1 = decode_step_cost(ENCDEC, B, S, 1, BYTES)
    # step 1 attends to 2 own positions + 3 encoder positions = 5 keys
    assert d1.flops == 1152 + 32 * 5 + 1600 == 2912
    assert d1.bytes == 2304 + (5 + 1) * 32 + 3200 == 5696  # read 5 positions, write 1
    d2 = decode_step_cost(ENCDEC, B, S, 2, BYTES)
    assert (d2.flops, d2.bytes) == (1152 + 32 * 6 + 1600, 2304 + 7 * 32 + 3200) == (2944, 5728)

    g = generation_cost(ENCDEC, B, S, N, BYTES)
    assert len(g.decode_steps) == N - 1
    assert (g.flops, g.bytes) == (9216 + 2912 + 2944, 9600 + 5696 + 5728) == (15072, 21024)
    # cache: 1 decoder layer * (3 self positions + 3 cross positions) * 32 bytes
    assert g.kv_cache_bytes == kv_cache_bytes(ENCDEC, B, S, N, BYTES) == 192


def test_deconly_by_hand():
    p = prefill_cost(DECONLY, B, S, BYTES)
    # 3 layers * (192 + 256) = 1344 params; 2 * 3 tokens * 1344 = 8064
    # causal attention: 3 layers * 3*4/2 pairs * 32 = 576; head 1600
    assert {q.name: q.flops for q in p.parts} == {"decoder": 8064, "attention": 576, "head": 1600}
    # bytes: 1344*4 weights; write 3 positions * 3 layers * 32 and read them back; head 3200
    assert {q.name: q.bytes for q in p.parts} == {"decoder": 5376, "attention": 576, "head": 3200}
    d1 = decode_step_cost(DECONLY, B, S, 1, BYTES)  # attends to S + 1 = 4 positions
    assert (d1.flops, d1.bytes) == (2688 + 3 * 32 * 4 + 1600, 5376 + 3 * (4 + 1) * 32 + 3200) == (4672, 9056)
    d2 = decode_step_cost(DECONLY, B, S, 2, BYTES)
    assert (d2.flops, d2.bytes) == (4768, 9152)
    assert kv_cache_bytes(DECONLY, B, S, N, BYTES) == 3 * (3 + 3) * 32 == 576
    # activations on: each matrix also reads its input and writes its output once per token.
    # per layer (in + out): QKV 8 + 16, out 8 + 8, MLP up 8 + 16, down 16 + 8 = 88; head 8 + 100 = 108
    d1a = decode_step_cost(DECONLY, B, S, 1, BYTES, include_activations=True)
    assert d1a.bytes == 9056 + 3 * 88 * 4 + 108 * 4 == 10544
    assert d1a.flops == d1.flops


def test_batch_scales_flops_but_not_weight_bytes():
    one, four = decode_step_cost(DECONLY, 1, S, 1, BYTES), decode_step_cost(DECONLY, 4, S, 1, BYTES)
    assert four.flops == 4 * one.flops
    assert four.part("decoder").bytes == one.part("decoder").bytes  # weights read once per step
    assert four.part("attention").bytes == 4 * one.part("attention").bytes  # each row has its own cache


def test_roofline_by_hand():
    m = Machine(peak_flops=1000.0, mem_bandwidth=1000.0)
    # prefill: decoder max(8064, 5376)/1000 + attention max(576, 576)/1000 + head max(1600, 3200)/1000
    g = generation_cost(DECONLY, B, S, N, BYTES)
    assert g.first_token_latency(m) == pytest.approx(8.064 + 0.576 + 3.2)
    # decode: step 1 = 5.376 + 0.48 + 3.2, step 2 = 5.376 + 0.576 + 3.2 (all memory-bound)
    decode = 9.056 + 9.152
    assert g.decode_time(m) == pytest.approx(decode)
    pred = g.predict(m)
    assert pred["decode_tokens_per_s"] == pytest.approx(2 / decode)
    assert pred["throughput_tokens_per_s"] == pytest.approx(3 / (11.84 + decode))


def _dense_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.dim() == 2)


@pytest.mark.parametrize("preset", ["encdec-tiny", "deconly-tiny"])
def test_matches_the_real_model(preset):
    """Weights, KV-cache bytes and matmul FLOPs agree with the model as built and as it runs."""
    config = ModelConfig.preset(preset)
    model = (EncoderDecoder if config.arch == "encdec" else DecoderOnly)(config).eval()
    w = weight_counts(config)
    layers = config.n_encoder_layers * (w.self_attn + w.mlp) + config.n_decoder_layers * (
        w.self_attn + w.cross_q_out + w.cross_kv + w.mlp
    )
    assert layers + w.head == _dense_params(model)  # the tied embedding is the head
    assert kv_cache_bytes(config, 2, 16, 5, 4) == model.new_cache(2, 16, 5).nbytes

    def matmul_flops(fc: FlopCounterMode) -> int:  # SDPA is priced separately (and not counted on every build)
        return sum(v for k, v in fc.get_flop_counts()["Global"].items() if "attention" not in str(k))

    ids = torch.randint(3, config.vocab_size, (2, 16))
    with torch.inference_mode():  # the plain model: FlopCounterMode counts aten's matmuls, not oneDNN's op
        with FlopCounterMode(display=False) as fc:
            logits, cache = model.prefill(ids, None, 5)
        p = prefill_cost(config, 2, 16)
        assert matmul_flops(fc) == p.flops - p.part("attention").flops
        with FlopCounterMode(display=False) as fc:
            model.decode_step(logits.argmax(-1), cache)
        d = decode_step_cost(config, 2, 16, 1)
        assert matmul_flops(fc) == d.flops - d.part("attention").flops


def test_330m_story():
    """The presets' headline shape: the encoder-decoder does less prefill work, reads far fewer bytes
    per decode step and holds 10/31 of the decoder-only model's KV cache."""
    enc, dec = ModelConfig.preset("encdec-330m"), ModelConfig.preset("deconly-330m")
    ge, gd = generation_cost(enc, 1, 512, 128, 4), generation_cost(dec, 1, 512, 128, 4)
    assert ge.prefill.flops / gd.prefill.flops == pytest.approx(0.67, abs=0.02)
    assert gd.decode_steps[0].bytes / ge.decode_steps[0].bytes == pytest.approx(2.42, abs=0.03)
    assert ge.kv_cache_bytes / gd.kv_cache_bytes == pytest.approx(10 / 31)


def test_bad_input_and_dtypes():
    assert dtype_bytes(torch.bfloat16) == dtype_bytes("float16") == 2 and dtype_bytes("float32") == 4
    with pytest.raises(ValueError, match="dtype"):
        dtype_bytes("int8")
    with pytest.raises(ValueError, match="input_len"):
        prefill_cost(ENCDEC, 1, 0)
    with pytest.raises(ValueError, match="step"):
        decode_step_cost(ENCDEC, 1, 4, 0)
    with pytest.raises(ValueError, match="output_len"):
        generation_cost(ENCDEC, 1, 4, 0)
    with pytest.raises(ValueError, match="positive"):
        Machine(0.0, 1.0)


def test_measure_machine_is_quick_and_sane():
    m = measure_machine("cpu", torch.float32, budget_s=0.02)
    assert m.measured and math.isfinite(m.peak_flops) and 1e8 < m.peak_flops < 1e15
    assert 1e8 < m.mem_bandwidth < 1e13


@pytest.mark.skipif(not int8_available(), reason="int8 needs fbgemm")
def test_the_int8_rows_probe_runs_a_prefill_through_int8_rows():
    """`optimize(prefill_products="int8")`'s roofline ("int8rows"): the probe's projection runs its 512
    rows as int8 rows, not bf16 products."""
    from encore.bench.machine import _probe_flops, probe_kernel

    layer = probe_kernel(torch.randn(64, 128), "int8rows")
    assert not layer.bf16_many_rows
    with torch.inference_mode():  # the peak probe alone (the bandwidth probe's 256 MiB is the int8 one's)
        peak = _probe_flops(torch.device("cpu"), torch.float32, 0.02, lambda: None, "int8rows")
    assert 1e8 < peak < 1e15


def test_roofline_kernel_and_given_machine():
    from encore.bench.machine import machine_for, roofline_kernel
    from encore.model.kernels import onednn_available

    fp32 = "onednn" if onednn_available() else "aten"
    assert roofline_kernel("cpu", torch.float32, None) == fp32
    assert roofline_kernel("cpu", torch.float32, None, linear="aten") == "aten"
    assert roofline_kernel("cpu", torch.float32, "int8") == "int8"
    assert roofline_kernel("cpu", torch.bfloat16, None) == "aten"
    assert roofline_kernel("cuda", torch.bfloat16, None) == "aten"
    given = machine_for("int8", "cpu", torch.float32, peak_flops=1e12, mem_bandwidth=4e10)
    assert (given.peak_flops, given.mem_bandwidth, given.measured) == (1e12, 4e10, False)
