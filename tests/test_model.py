"""Core models: cached generation equals the uncached rollout, padding invariance, RoPE, checkpoints."""

import pytest
import torch
from conftest import SeenOps, make_model

from encore import DecoderOnly, EncoderDecoder, ModelConfig, load
from encore.model.layers import RotaryEmbedding, apply_rope, rope_frequencies


def rollout(model, ids: torch.Tensor, n: int) -> list[int]:
    """Greedy decoding through `forward` alone (no cache), one unpadded row."""
    ids = ids[None]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            if isinstance(model, EncoderDecoder):
                dec = torch.tensor([[model.config.bos_token_id] + out])
                logits = model(ids, dec)
            else:
                logits = model(torch.cat([ids, torch.tensor([out], dtype=torch.long)], dim=1))
            out.append(int(logits[0, -1].argmax()))
    return out


def padded_batch(rows: list[torch.Tensor], side: str, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, sl], mask[i, sl] = r, 1
    return ids, mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_cached_generation_equals_uncached_rollout(arch, side):
    model = make_model(arch)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 512, (n,), generator=g) for n in (9, 4, 13)]
    ids, mask = padded_batch(rows, side)
    got = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=None)
    for i, row in enumerate(rows):
        expected = rollout(model, row, 8)
        assert got[i].tolist() == expected, f"row {i}"
    assert len(set(got.flatten().tolist())) > 3  # a real, varied rollout, not one repeated token


def test_stream_yields_what_generate_returns(arch):
    model = make_model(arch)
    ids = torch.randint(3, 512, (2, 6))
    steps = list(model.generate_stream(ids, max_new_tokens=5, eos_token_id=None))
    assert len(steps) == 5 and all(s.shape == (2,) for s in steps)
    assert torch.equal(torch.stack(steps, 1), model.generate(ids, max_new_tokens=5, eos_token_id=None))


def test_rows_stop_independently_at_eos(arch):
    model = make_model(arch)
    ids = torch.randint(3, 512, (3, 6), generator=torch.Generator().manual_seed(3))
    free = model.generate(ids, max_new_tokens=6, eos_token_id=None)
    eos = int(free[0, 2])  # make row 0's third token the EOS
    out = model.generate(ids, max_new_tokens=6, eos_token_id=eos)
    pad = model.config.pad_token_id
    for i in range(3):
        hits = (free[i] == eos).nonzero().flatten().tolist()
        stop = hits[0] if hits else 6
        assert out[i, : stop + 1].tolist() == free[i, : stop + 1].tolist()
        assert (out[i, stop + 1 :] == pad).all()
    # the loop exits once every row is done: a stream whose rows all stop yields fewer steps
    first = int(free[0, 0])
    assert len(list(model.generate_stream(ids[:1], max_new_tokens=6, eos_token_id=first))) == 1


def test_sampling_is_seeded_and_respects_top_k(arch):
    model = make_model(arch)
    ids = torch.randint(3, 512, (2, 5))
    a = model.generate(ids, max_new_tokens=6, do_sample=True, top_k=5, top_p=0.9, temperature=0.8, seed=7)
    b = model.generate(ids, max_new_tokens=6, do_sample=True, top_k=5, top_p=0.9, temperature=0.8, seed=7)
    assert torch.equal(a, b)
    greedy = model.generate(ids, max_new_tokens=1, eos_token_id=None)
    top1 = model.generate(ids, max_new_tokens=1, do_sample=True, top_k=1, seed=3, eos_token_id=None)
    assert torch.equal(greedy, top1)


@pytest.mark.parametrize("side", ["left", "right"])
def test_forward_padding_invariance(arch, side):
    model = make_model(arch)
    rows = [torch.randint(3, 512, (n,)) for n in (5, 11)]
    ids, mask = padded_batch(rows, side)
    with torch.no_grad():
        if arch == "encdec":
            dec_rows = [torch.randint(3, 512, (n,)) for n in (7, 3)]
            dec, dec_mask = padded_batch(dec_rows, side)
            batched = model(ids, dec, attention_mask=mask, decoder_attention_mask=dec_mask)
            for i in range(2):
                alone = model(rows[i][None], dec_rows[i][None])[0]
                real = dec_mask[i].bool()
                torch.testing.assert_close(batched[i][real], alone, atol=1e-4, rtol=1e-4)
        else:
            batched = model(ids, attention_mask=mask)
            for i in range(2):
                alone = model(rows[i][None])[0]
                torch.testing.assert_close(batched[i][mask[i].bool()], alone, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(batched).all()  # padded query rows never produce NaN


def test_encode_shape_and_padding():
    model = make_model("encdec")
    ids, mask = padded_batch([torch.randint(3, 512, (4,)), torch.randint(3, 512, (6,))], "left")
    with torch.no_grad():
        h = model.encode(ids, mask)
        alone = model.encode(ids[0:1, 2:])
    assert h.shape == (2, 6, model.config.d_model)
    torch.testing.assert_close(h[0, 2:], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "name,total_m",
    [
        ("encdec-330m", 331.8),
        ("deconly-330m", 329.6),
        ("encdec-1b", 949.1),
        ("deconly-1b", 955.4),
        ("encdec-3b", 2979.2),
        ("deconly-3b", 2972.6),
        ("encdec-10b", 10399.8),
        ("deconly-10b", 10349.4),
        # the releases' own counts (transformers' num_parameters; Marian's also holds its 0.52M sinusoids)
        ("flan-t5-small", 77.0),
        ("flan-t5-base", 247.6),
        ("flan-t5-large", 783.2),
        ("bart-base", 139.4),
        ("bart-large", 406.3),
        ("opus-mt", 73.9),
        ("nllb-200-distilled-600m", 615.1),
    ],
)
def test_preset_parameter_counts(name, total_m):
    counts = ModelConfig.preset(name).param_counts()
    assert counts["total"] / 1e6 == pytest.approx(total_m, abs=0.1)
    assert counts["total"] == counts["embedding"] + counts["encoder"] + counts["decoder"]


def test_a_deferred_build_quantizes_one_projection_at_a_time():
    """`build(deferred=True)` leaves the projections on the meta device; `optimize(quantize=...)` makes
    each just before quantizing it (the int4 policy's int8 head and encoder too), so the model never
    holds its fp32 weights (a 10B int4 model in ~6 GB); it generates, and norms, tables and biases get
    their usual starting values."""
    import encore
    from encore.model.int4 import Int4Linear
    from encore.model.io import build
    from encore.model.kernels import Int8Linear

    config = ModelConfig.preset("encdec-tiny", norm_kind="layernorm", proj_bias=True, vocab_size=512)
    model = build(config, seed=0, deferred=True)
    assert {p.is_meta for n, p in model.named_parameters() if ".qkv." in n} == {True}
    assert not any(p.is_meta for n, p in model.named_parameters() if "norm" in n or n.startswith("embed"))
    assert torch.equal(model.final_norm.weight, torch.ones(config.d_model))
    model = encore.optimize(model, quantize="int4")
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    kinds = {type(m) for m in model.modules()}
    assert Int4Linear in kinds and any(isinstance(m, Int8Linear) for m in model.encoder.modules())
    out = model.generate(torch.randint(3, 512, (1, 7)), max_new_tokens=4)
    assert out.shape == (1, 4)


def test_presets_match_their_families():
    ed = ModelConfig.preset("encdec-330m").param_counts()
    assert ed["encoder"] / (ed["encoder"] + ed["decoder"]) == pytest.approx(2 / 3, abs=0.03)  # the paper's split
    for name in ("deconly-330m", "encdec-330m-half", "encdec-330m-third"):
        assert ModelConfig.preset(name).param_counts()["total"] == pytest.approx(ed["total"], rel=0.03), name
    half = ModelConfig.preset("encdec-330m-half").param_counts()
    third = ModelConfig.preset("encdec-330m-third").param_counts()
    assert half["encoder"] / (half["encoder"] + half["decoder"]) == pytest.approx(1 / 2, abs=0.03)
    assert third["encoder"] / (third["encoder"] + third["decoder"]) == pytest.approx(1 / 3, abs=0.03)
    for size in ("1b", "3b", "10b"):  # 3B and 10B within 2% (#41), the split 2/3 : 1/3 of the layers
        ed = ModelConfig.preset(f"encdec-{size}").param_counts()
        assert ModelConfig.preset(f"deconly-{size}").param_counts()["total"] == pytest.approx(
            ed["total"], rel=0.03 if size == "1b" else 0.02
        )
    c = ModelConfig.preset("encdec-330m")
    assert (
        c.d_model,
        c.n_encoder_layers,
        c.n_decoder_layers,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.mlp_dim,
        c.vocab_size,
        c.tie_embeddings,
    ) == (1024, 20, 10, 6, 3, 64, 4096, 32128, True)


def test_model_parameter_count_matches_config(arch):
    config = ModelConfig.preset(f"{arch}-tiny")
    model = (EncoderDecoder if arch == "encdec" else DecoderOnly)(config)
    assert model.num_parameters() == config.param_counts()["total"]


@pytest.mark.parametrize("name", ["flan-t5-small", "bart-base", "opus-mt", "nllb-200-distilled-600m"])
def test_family_kinds_count_their_parameters(name):
    """Every kind's modules (LayerNorm biases, projection biases, position tables, relative biases) are
    in `param_counts`: a small model of each family's blocks."""
    small = dict(d_model=64, n_heads=2, n_kv_heads=2, head_dim=32, mlp_dim=96, vocab_size=300, max_seq_len=64)
    ids = dict(pad_token_id=1, bos_token_id=2, eos_token_id=2)
    config = ModelConfig.preset(name, **small, **ids, n_encoder_layers=2, n_decoder_layers=1)
    with torch.device("meta"):
        model = EncoderDecoder(config)
    assert model.num_parameters() == config.param_counts()["total"]


def test_rope_scores_depend_only_on_relative_position():
    config = ModelConfig.preset("encdec-tiny")
    rope = RotaryEmbedding(config)
    q, k = torch.randn(config.head_dim), torch.randn(config.head_dim)

    def score(i: int, j: int) -> float:
        rq = apply_rope(q[None, None, None], rope(torch.tensor([[i]]), torch.float32))
        rk = apply_rope(k[None, None, None], rope(torch.tensor([[j]]), torch.float32))
        return float((rq * rk).sum())

    assert score(5, 2) == pytest.approx(score(105, 102), abs=1e-4)
    assert score(40, 7) == pytest.approx(score(1040, 1007), abs=1e-3)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
    # rotation preserves norms
    rq = apply_rope(q[None, None, None], rope(torch.tensor([[77]]), torch.float32))
    assert float(rq.norm()) == pytest.approx(float(q.norm()), rel=1e-5)


def test_rope_ntk_scaling():
    d, theta = 64, 10000.0
    plain, scaled = rope_frequencies(d, theta), rope_frequencies(d, theta, scaling=4.0)
    assert scaled[0] == pytest.approx(plain[0])  # the highest frequency stays put
    assert float(plain[-1] / scaled[-1]) == pytest.approx(4.0, rel=1e-6)  # the lowest stretches by s
    assert (scaled <= plain + 1e-12).all()
    # the tables the model uses: at 4x the position, the scaled slowest rotation is where the plain one was
    plain_tab = RotaryEmbedding(ModelConfig.preset("encdec-tiny"))
    scaled_tab = RotaryEmbedding(ModelConfig.preset("encdec-tiny", rope_scaling=4.0))
    last = plain_tab.head_dim // 2 - 1
    assert float(scaled_tab.cos[400, last]) == pytest.approx(float(plain_tab.cos[100, last]), abs=1e-5)


def test_save_load_round_trip(arch, tmp_path):
    model = make_model(arch)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.config == model.config
    cls = EncoderDecoder if arch == "encdec" else DecoderOnly
    assert type(cls.from_pretrained(tmp_path / "ckpt")) is cls
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    ids = torch.randint(3, 512, (2, 5))
    assert torch.equal(model.generate(ids, max_new_tokens=4), loaded.generate(ids, max_new_tokens=4))


def test_from_pretrained_wrong_class_and_bad_files(tmp_path):
    make_model("encdec").save_pretrained(tmp_path / "ed")
    with pytest.raises(ValueError, match="arch is 'encdec'"):
        DecoderOnly.from_pretrained(tmp_path / "ed")
    (tmp_path / "ed" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        load(tmp_path / "ed")
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"arch": "encdec", "d_modell": 3}')
    with pytest.raises(ValueError, match="d_modell"):
        load(tmp_path / "bad")


def test_config_json_round_trip_and_validation(tmp_path):
    config = ModelConfig.preset("encdec-330m", rope_scaling=2.0)
    config.save(tmp_path / "c.json")
    assert ModelConfig.load(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig.preset("encdec-tiny", n_kv_heads=3)
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.preset("encdec-7b")
    # config.json spells rope_scaling as rope_ntk_factor (transformers parses a rope_scaling key)
    assert "rope_scaling" not in (tmp_path / "c.json").read_text()
    assert ModelConfig.from_dict(config.to_dict()) == config
    (tmp_path / "broken.json").write_text("{nope")
    with pytest.raises(ValueError, match="line 1"):
        ModelConfig.load(tmp_path / "broken.json")


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda m: m.generate(torch.tensor([[3, 600]]), max_new_tokens=2), r"input_ids\[0, 1\] = 600 is outside"),
        (lambda m: m.generate(torch.tensor([[3, -1]]), max_new_tokens=2), "outside the vocabulary"),
        (lambda m: m.generate(torch.tensor([[3, 4]]), max_new_tokens=-1), "max_new_tokens"),
        (lambda m: m.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2), "empty"),
        (lambda m: m.generate(torch.tensor([[3, 4]]), torch.ones(1, 3), max_new_tokens=2), "shape"),
        (lambda m: m.generate(torch.tensor([[3, 4]]), torch.zeros(1, 2), max_new_tokens=2), "masks out every"),
        (lambda m: m.generate(torch.tensor([3, 4]), max_new_tokens=2), r"\[batch, seq_len\]"),
        (lambda m: m.generate(torch.tensor([[3.0, 4.0]]), max_new_tokens=2), "integer"),
        (lambda m: m.generate(torch.tensor([[3, 4]]), do_sample=True, temperature=0.0), "temperature"),
    ],
)
def test_bad_input_gives_clear_errors(arch, call, message):
    with pytest.raises(ValueError, match=message):
        call(make_model(arch))


def test_forward_bad_input(arch):
    """Token ids are checked where they enter (generate, encode); forward keeps the checks that cost no
    host read: shapes and lengths."""
    model = make_model(arch)
    if arch == "encdec":
        with pytest.raises(ValueError, match="outside the vocabulary"):
            model.encode(torch.tensor([[3, 9999]]))
        with pytest.raises(ValueError, match="batch size"):
            model(torch.tensor([[3, 4]]), torch.tensor([[1], [1]]))
    too_long = torch.randint(3, 512, (1, model.config.max_seq_len + 1))
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(too_long, max_new_tokens=1)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(too_long, too_long) if arch == "encdec" else model(too_long)


def test_training_forward_reads_nothing_on_the_host(arch):
    """No input check inside forward / backward: a host read (`aten._local_scalar_dense`, what .item(),
    bool() and int() of a tensor run) would stall every training step on a GPU."""
    model = make_model(arch).train()
    ids = torch.randint(3, 512, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    args = (ids, ids[:, :5], mask, mask[:, :5]) if arch == "encdec" else (ids, mask)
    with SeenOps() as seen:
        model(*args).float().square().mean().backward()
    assert "aten._local_scalar_dense" not in seen.ops


def test_zero_new_tokens(arch):
    out = make_model(arch).generate(torch.tensor([[3, 4]]), max_new_tokens=0)
    assert out.shape == (1, 0)


def test_decoder_only_logits_mask_selects_positions():
    model = make_model("deconly")
    ids = torch.randint(3, 512, (2, 6))
    keep = torch.zeros(2, 6, dtype=torch.bool)
    keep[0, 2] = keep[1, 4:] = True
    with torch.no_grad():
        torch.testing.assert_close(model(ids, logits_mask=keep), model(ids)[keep])
    with pytest.raises(ValueError, match="logits_mask has shape"):
        model(ids, logits_mask=keep[:, :3])
