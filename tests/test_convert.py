"""Imported families match transformers: tiny random models built from each family's own config
(offline, seconds), saved as transformers checkpoints, loaded by encore. Logits within 1e-4
(relative), greedy tokens equal for 40 steps (past every sliding window of 4), on padded batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import encore
from encore.convert import ADAPTERS, ConversionError, from_hf, load, resolve_model

transformers = pytest.importorskip("transformers")

WINDOW = 4
VOCAB = 160
STEPS = 40
SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    initializer_range=0.2,  # peaked logits: greedy choices are not decided by rounding
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)


def _llama():
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**SHAPE, num_hidden_layers=3, rope_parameters=rope, tie_word_embeddings=True)
    )


def _qwen2():
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SHAPE, num_hidden_layers=2))


def _qwen3():
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**SHAPE, num_hidden_layers=2))


def _gemma3():
    config = transformers.Gemma3TextConfig(
        **SHAPE,
        num_hidden_layers=4,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        query_pre_attn_scalar=24,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "rope_theta": 100000.0, "factor": 4.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    )
    return transformers.Gemma3ForCausalLM(config)


def _t5gemma():
    half = dict(SHAPE, sliding_window=WINDOW, query_pre_attn_scalar=24, final_logit_softcapping=30.0,
                attn_logit_softcapping=50.0)  # fmt: skip
    config = transformers.T5GemmaConfig(
        encoder=dict(half, num_hidden_layers=3),
        decoder=dict(half, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"]),
        vocab_size=VOCAB,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return transformers.T5GemmaForConditionalGeneration(config)


def _t5gemma2():
    """T5Gemma 2 with a tiny SigLIP tower (encore loads the text model, or the tower too with vision=True):
    32 px images, 8 px patches, pooled to 4 tokens; <start_of_image> 151, <image> 152, <eoi> 150."""
    rope = {
        "full_attention": {"rope_type": "linear", "rope_theta": 100000.0, "factor": 4.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    }
    text = dict(SHAPE, sliding_window=WINDOW, query_pre_attn_scalar=24, rope_parameters=rope)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32)
    encoder = dict(
        text_config=dict(text, num_hidden_layers=3, layer_types=["sliding_attention"] * 2 + ["full_attention"]),
        vision_config=dict(vision, patch_size=8),
        mm_tokens_per_image=4,
        eoi_token_index=150,  # inside the tiny vocabulary: its own input vector is exercised
        boi_token_index=151,
    )
    decoder = dict(text, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])
    config = transformers.T5Gemma2Config(encoder=encoder, decoder=decoder, eoi_token_index=150, image_token_index=152)
    return transformers.T5Gemma2ForConditionalGeneration(config)


def _t5(config_class="T5Config", **kwargs):
    config = getattr(transformers, config_class)(
        vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        relative_attention_max_distance=12, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        **kwargs,
    )  # fmt: skip
    return getattr(transformers, config_class.replace("Config", "ForConditionalGeneration"))(config)


def _mt5():
    """T5 v1.1's blocks (gated GELU, no output scale); its own head is written into the files (`pair`)."""
    return _t5("MT5Config", feed_forward_proj="gated-gelu", tie_word_embeddings=False)


# BART's kin: 2 + 2 layers, the encoder's MLP narrower than the decoder's (encore's `encoder_shape`)
_FAIRSEQ = dict(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=128, max_position_embeddings=64,
                init_std=0.2, dropout=0.0, pad_token_id=0, eos_token_id=1, bos_token_id=2, decoder_start_token_id=2,
                forced_eos_token_id=None)  # fmt: skip


def _fairseq(name: str, model: str, **kwargs):
    return getattr(transformers, model)(getattr(transformers, f"{name}Config")(**{**_FAIRSEQ, **kwargs}))


DECODER_ONLY = {"llama": _llama, "qwen2": _qwen2, "qwen3": _qwen3, "gemma3_text": _gemma3}
SEQ2SEQ = {  # the encoder-decoders people deploy (issue #37): every kind of norm, block order and position
    "t5": lambda: _t5(feed_forward_proj="relu"),  # T5 v1.0: tied head, scaled by d_model ** -0.5
    "mt5": _mt5,
    "bart": lambda: _fairseq("Bart", "BartForConditionalGeneration"),
    "mbart": lambda: _fairseq(
        "MBart", "MBartForConditionalGeneration", scale_embedding=True, activation_function="relu"
    ),
    "marian": lambda: _fairseq("Marian", "MarianMTModel", scale_embedding=True, activation_function="swish"),
    "pegasus": lambda: _fairseq("Pegasus", "PegasusForConditionalGeneration"),
    "m2m_100": lambda: _fairseq(
        "M2M100",
        "M2M100ForConditionalGeneration",
        pad_token_id=1,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        activation_function="relu",
        scale_embedding=True,
    ),  # fmt: skip
}
FAMILIES = {**DECODER_ONLY, "t5gemma": _t5gemma, "t5gemma2": _t5gemma2, **SEQ2SEQ}
ENCODER_DECODER = ("t5gemma", "t5gemma2", *SEQ2SEQ)


def _reference(make):
    torch.manual_seed(0)
    hf = make().eval()
    hf.config._attn_implementation = "eager"
    hf.generation_config.eos_token_id = None  # run every step: tokens compared position by position
    with torch.no_grad():  # biases, norms and logits biases away from their zero / one init: each is checked
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
        if hasattr(hf, "final_logits_bias"):
            hf.final_logits_bias.normal_(0.0, 0.5)
    return hf


def _own_head(hf, directory):
    """T5 v1.1's files hold a head of their own: write one in, and reload the reference from the files."""
    from safetensors.torch import load_file, save_file

    state = load_file(directory / "model.safetensors")
    state["lm_head.weight"] = torch.randn(VOCAB, 64, generator=torch.Generator().manual_seed(3))
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    again = type(hf).from_pretrained(directory).eval()
    again.config._attn_implementation = "eager"
    again.generation_config.eos_token_id = None
    return again


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    """(family, transformers model, its checkpoint directory, the encore model loaded from it)."""
    hf = _reference(FAMILIES[request.param])
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    if request.param == "mt5":
        hf = _own_head(hf, directory)
    return request.param, hf, directory, load(directory)


def _batch(padding: str):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    if padding == "right":
        mask[1, 7:] = 0
        ids[1, 7:] = 0
    else:
        mask[1, :4] = 0
        ids[1, :4] = 0
    return ids, mask


def _close(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    if mask is not None:
        ours, theirs = ours[mask.bool()], theirs[mask.bool()]
    scale = theirs.abs().max()
    assert (ours - theirs).abs().max() <= 1e-4 * scale, float((ours - theirs).abs().max() / scale)


def test_every_family_has_a_parity_test():
    assert set(FAMILIES) <= set(ADAPTERS)


def test_logits_match_transformers(pair):
    family, hf, _, model = pair
    ids, mask = _batch("right")
    ids[0, 2] = 150  # T5Gemma 2's <eoi> (its own input vector); an ordinary token for the others
    with torch.no_grad():
        if family in ENCODER_DECODER:
            dec = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
            dec_mask = torch.ones_like(dec)
            dec_mask[1, 6:] = 0
            theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
            ours = model(ids, dec, attention_mask=mask, decoder_attention_mask=dec_mask)
            _close(ours, theirs.logits, dec_mask)
        else:
            _close(model(ids, attention_mask=mask), hf(input_ids=ids, attention_mask=mask).logits, mask)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_greedy_tokens_match_transformers(pair, padding):
    family, hf, _, model = pair
    if family in ENCODER_DECODER and padding == "left":
        pytest.skip("transformers' T5Gemma counts encoder positions from the first column: right padding only")
    ids, mask = _batch(padding)
    with torch.no_grad():
        if (
            family not in ENCODER_DECODER and padding == "right"
        ):  # transformers generates after the pads: each row alone
            rows = [ids[i : i + 1, : int(mask[i].sum())] for i in range(len(ids))]
            theirs = torch.cat(
                [hf.generate(input_ids=r, max_new_tokens=STEPS, do_sample=False)[:, -STEPS:] for r in rows]
            )
        else:
            theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=False)[:, -STEPS:]
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, eos_token_id=None)
    assert ours.tolist() == theirs.tolist()


def test_engine_and_int8_run_an_imported_model(pair):
    family, _, _, model = pair
    ids, _ = _batch("right")
    reference = model.generate(ids[:1], max_new_tokens=8, eos_token_id=None)[0].tolist()
    engine = encore.Engine(model, max_batch=2, max_input_len=16, max_new_tokens=8)
    engine.add(ids[0].tolist(), eos_token_id=None)
    tokens = [e.token for _ in range(20) if engine.has_work() for e in engine.step()]
    assert tokens == reference
    with torch.no_grad():
        fp32 = model.prefill(ids, None, 1)[0]
        quantized = encore.optimize(model, quantize="int8")
        try:
            int8 = quantized.prefill(ids, None, 1)[0]
        finally:
            encore.deoptimize(model)
    assert torch.nn.functional.cosine_similarity(fp32, int8, dim=-1).min() > 0.99  # int8 error, not a wrong wiring


def test_optimized_fp32_keeps_the_tokens(pair):
    """`optimize`'s fp32 kernels (oneDNN projections, the C attention and norms where the family's
    blocks take them) change no greedy token (fp32 K/V: fp16's rounding may move a close call)."""
    family, _, _, model = pair
    ids, mask = _batch("right")
    reference = model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=None)
    encore.optimize(model, kv_dtype=torch.float32)
    try:
        assert model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=None).tolist() == (
            reference.tolist()
        )
    finally:
        encore.deoptimize(model)


def test_round_trip_to_transformers(pair, tmp_path):
    family, hf, _, model = pair
    if family == "t5gemma2":  # its vision tower is not loaded: writing it back would drop it, so it is refused
        with pytest.raises(ConversionError, match="T5Gemma 2's text model only"):
            model.save_pretrained(tmp_path, format="hf")
        return
    model.save_pretrained(tmp_path, format="hf")
    auto = transformers.AutoModelForSeq2SeqLM if family in ENCODER_DECODER else transformers.AutoModelForCausalLM
    again = auto.from_pretrained(tmp_path).eval()
    again.config._attn_implementation = "eager"
    ids, mask = _batch("right")
    with torch.no_grad():
        if family in ENCODER_DECODER:
            dec = ids[:, :5]
            _close(again(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
                   hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits)  # fmt: skip
        else:
            _close(
                again(input_ids=ids, attention_mask=mask).logits, hf(input_ids=ids, attention_mask=mask).logits, mask
            )


def test_from_hf_takes_a_model_object(pair):
    family, hf, _, model = pair
    again = from_hf(hf)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_resolve_model_reads_the_family_config(pair):
    family, _, directory, model = pair
    config, checkpoint = resolve_model(str(directory))
    assert checkpoint == directory and config.family == family and config.arch == model.config.arch


def test_bf16_load_streams_into_bf16(pair):
    _, _, directory, _ = pair
    model = load(directory, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_a_tied_unscaled_t5_round_trips(tmp_path):
    """transformers 5 builds Flan-T5 / T5 v1.1 configs (`tie_word_embeddings=False`) with the head tied
    to the table and unscaled; encore writes such a model back with a head of its own (unscaled in every
    transformers version) and transformers reloads the same logits."""
    hf = _reference(lambda: _t5(feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    hf.save_pretrained(tmp_path / "in")
    model = load(tmp_path / "in")
    assert model.config.tie_embeddings and model.config.head_scale is None
    model.save_pretrained(tmp_path / "out", format="hf")
    again = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").eval()
    ids, mask = _batch("right")
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :5]).logits
        _close(again(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :5]).logits, want)
        _close(model(ids, ids[:, :5], attention_mask=mask), want)


def test_t5_asked_for_fp16_runs_bf16_and_says_so(tmp_path):
    """T5's feed-forward outputs pass fp16's 65504 (CTranslate2 #1074): a T5 asked for float16 (loaded,
    or optimized) runs bfloat16 with one warning, and its logits stay finite where fp16's would not."""
    hf = _t5()
    with torch.no_grad():
        hf.decoder.block[0].layer[-1].DenseReluDense.wo.weight.fill_(30000.0)  # activations past fp16's range
    hf.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="t5 overflows float16.*bfloat16"):
        model = load(tmp_path, dtype=torch.float16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        assert torch.isfinite(model(ids, torch.tensor([[0, 9, 10]]))).all()
        assert not torch.isfinite(load(tmp_path).half()(ids, torch.tensor([[0, 9, 10]]))).all()  # what it avoids
    with pytest.warns(UserWarning, match="bfloat16"):
        assert encore.optimize(load(tmp_path), dtype=torch.float16).embed.weight.dtype == torch.bfloat16


# --- errors, in one line ------------------------------------------------------------------------------


def test_a_hub_name_typed_as_a_path_gets_the_hf_prefix_hint():
    with pytest.raises(
        FileNotFoundError, match="no such checkpoint directory; for the hub, write hf:google/flan-t5-base"
    ):
        resolve_model("google/flan-t5-base")


def test_unsupported_model_type_names_the_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ConversionError, match=r"model_type 'mamba' is not supported; encore converts .*llama"):
        load(tmp_path)


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = _reference(_qwen2)
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["model.layers.1.self_attn.k_proj.weight"] = state["model.layers.1.self_attn.k_proj.weight"][:8]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"decoder\.1\.attn\.qkv\.weight .* has shape"):
        load(tmp_path)
    del state["model.layers.1.self_attn.k_proj.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"tensor 'model\.layers\.1\.self_attn\.k_proj\.weight' is missing"):
        load(tmp_path)


def test_encore_models_no_family_can_express_are_refused(tmp_path):
    model = encore.EncoderDecoder(encore.ModelConfig.preset("encdec-tiny"))
    with pytest.raises(ConversionError, match="no transformers family can express this model"):
        model.save_pretrained(tmp_path, format="hf")


def test_an_encore_swiglu_decoder_only_model_saves_as_llama(tmp_path):
    config = encore.ModelConfig.preset("deconly-tiny", mlp_type="swiglu", vocab_size=256, n_decoder_layers=2)
    model = encore.DecoderOnly(config).eval()
    model.save_pretrained(tmp_path, format="hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 256, (1, 9))
    with torch.no_grad():
        _close(model(ids), hf(input_ids=ids).logits)


# --- T5Gemma 2's image tower --------------------------------------------------------------------------


def test_t5gemma2_loads_with_its_image_tower(tmp_path):
    """vision=True: SigLIP + Gemma 3's pooling projector around the text model; logits and greedy tokens
    with an image equal transformers'; the encore-format save loads back as the same model."""
    from encore.model.vlm import VisionLanguageModel

    hf = _reference(_t5gemma2)
    hf.save_pretrained(tmp_path / "hf")
    vlm = load(tmp_path / "hf", vision=True)
    assert isinstance(vlm, VisionLanguageModel) and vlm.vision_config.projector == "pool"
    assert vlm.image_block == [151, 152, 152, 152, 152, 150]  # <start_of_image>, 4 pooled tokens, <end_of_image>
    text = torch.randint(3, 140, (2, 7), generator=torch.Generator().manual_seed(3)).tolist()
    ids = torch.tensor([vlm.image_prompt(row) for row in text])
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    dec = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = hf(input_ids=ids, pixel_values=pixels, decoder_input_ids=dec).logits
        _close(vlm(ids, pixels, dec), theirs)
        assert (theirs - hf(input_ids=ids, decoder_input_ids=dec).logits).abs().max() > 1e-3  # the image counts
        reference = hf.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=STEPS, do_sample=False)
    ours = vlm.generate(ids, pixel_values=pixels, max_new_tokens=STEPS, eos_token_id=None)
    assert ours.tolist() == reference[:, -STEPS:].tolist()
    vlm.save_pretrained(tmp_path / "encore")
    again = load(tmp_path / "encore")
    assert isinstance(again, VisionLanguageModel) and again.image_block == vlm.image_block
    with torch.no_grad():
        _close(again(ids, pixels, dec), theirs)


def test_t5gemma2_with_its_tower_saves_as_t5gemma2(tmp_path):
    """format="hf" of a model loaded with vision=True: T5Gemma 2's own files, tower and projector
    included, which transformers loads with the same logits (with and without an image) and encore
    loads back as the same vision-language model; the text model alone is still refused."""
    from PIL import Image
    from safetensors import safe_open

    from encore.vision import preprocess

    hf = _reference(_t5gemma2)
    hf.save_pretrained(tmp_path / "hf")
    vlm = load(tmp_path / "hf", vision=True)
    with pytest.raises(ConversionError, match="load the checkpoint with vision=True"):
        vlm.lm.save_pretrained(tmp_path / "text", format="hf")
    vlm.save_pretrained(tmp_path / "out", format="hf")
    again = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").eval()
    again.config._attn_implementation = "eager"
    ids = torch.tensor([vlm.image_prompt(list(range(3, 10))), vlm.image_prompt(list(range(20, 27)))])
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    dec = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for inputs in ({"pixel_values": pixels}, {}):
            _close(again(input_ids=ids, decoder_input_ids=dec, **inputs).logits,
                   hf(input_ids=ids, decoder_input_ids=dec, **inputs).logits)  # fmt: skip
    back = load(tmp_path / "out", vision=True)
    assert back.image_block == vlm.image_block and back.vision_config == vlm.vision_config
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (50, 70, 3), dtype=np.uint8))
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "out")  # the tower's preprocessing
    theirs = processor(images=[image], return_tensors="pt")["pixel_values"]
    assert torch.equal(theirs, preprocess([image], vlm.vision_config))
    bf16 = tmp_path / "bf16"
    vlm.save_pretrained(bf16, format="hf", dtype=torch.bfloat16)
    with safe_open(bf16 / "model.safetensors", "pt") as f:
        names = list(f.keys())
        assert {f.get_slice(n).get_dtype() for n in names} == {"BF16"}
    assert any(n.startswith("model.encoder.vision_tower.") for n in names)
    assert "model.encoder.multi_modal_projector.mm_input_projection_weight" in names


def test_an_encore_vision_model_is_refused_as_hf(tmp_path):
    from encore.vision import VisionConfig

    config = encore.ModelConfig.preset("encdec-tiny", vocab_size=256)
    vlm = encore.VisionLanguageModel(config, VisionConfig.preset("vit-tiny"), image_token_id=200)
    with pytest.raises(ConversionError, match="an encore-built vision-language model has no transformers family"):
        vlm.save_pretrained(tmp_path, format="hf")


def test_vision_needs_a_tower(pair, tmp_path):
    family, _, directory, _ = pair
    if family == "t5gemma2":
        assert not isinstance(load(directory), encore.VisionLanguageModel)  # text only unless asked
        return
    with pytest.raises(ConversionError, match="no image tower in this checkpoint"):
        load(directory, vision=True)


# --- T5Gemma with an encoder of its own width (9B-2B's layout) -------------------------------------------


def _t5gemma_unbalanced():
    half = dict(SHAPE, sliding_window=WINDOW, query_pre_attn_scalar=24, final_logit_softcapping=30.0,
                attn_logit_softcapping=50.0)  # fmt: skip
    wide = dict(half, num_hidden_layers=2, hidden_size=96, intermediate_size=160, num_attention_heads=6,
                num_key_value_heads=3)  # fmt: skip
    config = transformers.T5GemmaConfig(
        encoder=wide, decoder=dict(half, num_hidden_layers=2), vocab_size=VOCAB, pad_token_id=0, eos_token_id=1,
        bos_token_id=2,
    )  # fmt: skip
    return transformers.T5GemmaForConditionalGeneration(config)


def test_t5gemma_encoder_of_its_own_width(tmp_path):
    """The encoder 96 wide with 6 heads, the decoder 64 with 4: cross-attention projects K/V from the
    encoder's width; logits, greedy tokens and the way back to transformers' files match."""
    hf = _reference(_t5gemma_unbalanced)
    hf.save_pretrained(tmp_path / "hf")
    model = load(tmp_path / "hf")
    assert model.config.encoder_shape == {"d_model": 96, "mlp_dim": 160, "n_heads": 6, "n_kv_heads": 3}
    assert model.config.d_model == 64 and model.num_parameters() == model.config.param_counts()["total"]
    assert model.num_parameters() == sum(p.numel() for p in hf.parameters())
    ids, mask = _batch("right")
    dec = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        _close(model(ids, dec, attention_mask=mask), theirs)
        reference = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=False)
    assert model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, eos_token_id=None).tolist() == (
        reference[:, -STEPS:].tolist()
    )
    model.save_pretrained(tmp_path / "back", format="hf")
    again = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "back").eval()
    again.config._attn_implementation = "eager"
    with torch.no_grad():
        _close(again(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits, theirs)
    with pytest.raises(ValueError, match="encoder_shape"):
        model.config.replace(tie_encoder_embeddings=True)  # a 96-wide encoder cannot read the 64-wide table
