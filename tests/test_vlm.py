"""VisionLanguageModel over both architectures: image tokens at the placeholders, cached generation with
an image equals the uncached rollout through forward, padding, checks, save / load, training, VQA data."""

import json

import pytest
import torch
from conftest import make_model

import encore
from encore.data import shapesvqa
from encore.data.collate import finetune_collator
from encore.data.records import DataError, SkipReport
from encore.data.vqa import VisionCollator, load_vqa
from encore.model.vlm import VisionLanguageModel
from encore.train.losses import default_loss
from encore.vision import VisionConfig, preprocess

VIT = VisionConfig.preset("vit-tiny")


def make_vlm(arch: str, keep: float = 0.33, selection: str = "variance", seed: int = 0) -> VisionLanguageModel:
    lm = make_model(arch, seed)
    torch.manual_seed(seed)
    vlm = VisionLanguageModel(lm.config, VIT, keep, selection, image_token_id=104, lm=lm)
    with torch.no_grad():  # image tokens as large as the word embeddings: they move the rollout
        for p in vlm.vision.projector.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return vlm.eval()


def pixels(n: int, start: int = 0) -> torch.Tensor:
    return preprocess([shapesvqa.generate_example("train", start + i).image(64) for i in range(n)], VIT)


def padded(vlm: VisionLanguageModel, questions: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [vlm.image_prompt(q) for q in questions]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, cols], mask[i, cols] = torch.tensor(r), 1
    return ids, mask


@pytest.mark.parametrize("keep", [1.0, 0.33, 0.1])
def test_token_counts_and_placeholders(arch, keep):
    vlm = make_vlm(arch, keep)
    k = VIT.kept(keep)
    assert vlm.n_image_tokens == k and vlm.image_tokens(pixels(2)).shape == (2, k, vlm.config.d_model)
    prompt = vlm.image_prompt([300, 301])
    assert prompt.count(104) == k and prompt[-1] == vlm.config.eos_token_id
    assert (prompt[0] == vlm.config.bos_token_id) == (arch == "deconly")
    ids = torch.tensor([prompt])
    embeds = vlm.embed_inputs(ids, pixels(1))
    where = ids[0] == 104
    assert torch.allclose(embeds[0, where], vlm.image_tokens(pixels(1))[0])  # image tokens, in order
    assert torch.equal(embeds[0, ~where], vlm.lm.embed(ids)[0, ~where])  # text untouched


def rollout(vlm: VisionLanguageModel, ids: torch.Tensor, mask: torch.Tensor, px: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy tokens through `forward` alone: no cache, everything recomputed at every step."""
    out = torch.empty(ids.shape[0], 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(n):
            if vlm.arch == "encdec":
                dec = torch.cat([torch.full((ids.shape[0], 1), vlm.config.bos_token_id), out], 1)
                logits = vlm(ids, px, dec, mask)[:, -1]
            else:
                full = torch.cat([ids, out], 1)
                logits = vlm(full, px, attention_mask=torch.cat([mask, torch.ones_like(out)], 1))[:, -1]
            out = torch.cat([out, logits.argmax(-1, keepdim=True)], 1)
    return out


def test_cached_generation_with_an_image_equals_the_uncached_rollout(arch):
    vlm = make_vlm(arch)
    side = "right" if arch == "encdec" else "left"  # how each architecture's batches are padded
    ids, mask = padded(vlm, [[300, 301, 302, 303, 304], [310, 311]], side)
    px = pixels(2)
    new = vlm.generate(ids, pixel_values=px, attention_mask=mask, max_new_tokens=10, eos_token_id=None)
    assert torch.equal(new, rollout(vlm, ids, mask, px, 10))
    assert len(set(new[0].tolist())) > 2  # a varied rollout, not one repeated token
    # each padded row equals itself alone, and the image matters
    for row in range(2):
        real = mask[row].bool()
        solo = vlm.generate(
            ids[row : row + 1, real], pixel_values=px[row : row + 1], max_new_tokens=10, eos_token_id=None
        )
        assert torch.equal(solo[0], new[row])
    other = vlm.generate(
        ids, pixel_values=pixels(2, start=7), attention_mask=mask, max_new_tokens=10, eos_token_id=None
    )
    assert not torch.equal(other, new)


def test_the_encoder_decoder_caches_image_tokens_only_in_cross_attention():
    vlm = make_vlm("encdec")
    ids = torch.tensor([vlm.image_prompt([300, 301])])
    embeds = vlm.embed_inputs(ids, pixels(1))
    _, cache = vlm.lm.prefill(ids, None, 4, inputs_embeds=embeds)
    assert cache.cross_k.shape[3] == ids.shape[1] and cache.max_len == 4  # self-attention: outputs only
    deconly = make_vlm("deconly")
    ids = torch.tensor([deconly.image_prompt([300, 301])])
    _, cache = deconly.lm.prefill(ids, None, 4, inputs_embeds=deconly.embed_inputs(ids, pixels(1)))
    assert cache.max_len == ids.shape[1] + 4  # every layer keeps all image tokens


def test_bad_inputs_are_named(arch):
    vlm = make_vlm(arch)
    ids = torch.tensor([vlm.image_prompt([300])])
    with pytest.raises(ValueError, match="no pixel_values"):
        vlm.generate(ids, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"row 0 holds 21 <image> placeholders; this model puts 22"):
        vlm.generate(ids[:, 1:] if arch == "encdec" else ids[:, [0, *range(2, ids.shape[1])]], pixel_values=pixels(1))
    with pytest.raises(ValueError, match="2 images but input_ids has 1 rows"):
        vlm.generate(ids, pixel_values=pixels(2))
    with pytest.raises(ValueError, match=r"pixel_values must be \[B, 3, 64, 64\]"):
        vlm.generate(ids, pixel_values=torch.zeros(1, 3, 32, 32))


def test_save_and_load_round_trip(tmp_path, arch):
    vlm = make_vlm(arch, keep=0.33, selection="learned")
    vlm.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "vision_config.json").read_text())
    assert meta["vision"]["hidden_size"] == VIT.hidden_size and meta["selection"] == "learned"
    loaded = encore.load(tmp_path / "m")
    assert isinstance(loaded, VisionLanguageModel) and loaded.n_image_tokens == vlm.n_image_tokens
    ids, px = torch.tensor([vlm.image_prompt([300, 301])]), pixels(1)
    same = lambda m: m.generate(ids, pixel_values=px, max_new_tokens=6, eos_token_id=None)
    assert torch.equal(same(loaded), same(vlm))
    (tmp_path / "m" / "vision_config.json").write_text('{"vision": ')
    with pytest.raises(ValueError, match="vision_config.json: not valid JSON"):
        encore.load(tmp_path / "m")


def test_a_training_step_reaches_the_projector_not_the_frozen_tower(arch, tmp_path):
    vlm = make_vlm(arch, selection="learned").train()
    examples = [
        {
            "source_ids": [300 + i, 301],
            "target_ids": [400 + i],
            "image": shapesvqa.generate_example("train", i).image(64),
        }
        for i in range(3)
    ]
    collate = VisionCollator(finetune_collator(vlm.config), lambda im: preprocess(im, VIT), vlm.image_block)
    batch = collate(examples)
    assert batch["pixel_values"].shape == (3, 3, 64, 64) and (batch["input_ids"] == 104).sum() == 3 * 22
    default_loss(arch)(vlm, batch).total.backward()
    assert vlm.vision.projector[0].weight.grad.abs().sum() > 0 and vlm.vision.scorer.weight.grad is not None
    assert all(p.grad is None for p in vlm.vision.tower.parameters())


def test_vqa_jsonl_reader_names_file_line_and_field(tmp_path):
    shapesvqa.generate_example("train", 0).image(32).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    good = {"image": "a.png", "question": "What colour?", "answer": "red"}
    path = tmp_path / "vqa.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "image": "bad.png"}) + "\n")
    first = next(iter(load_vqa(path)))
    assert first["source"] == "What colour?" and first["target"] == "red" and first["image"].size == (32, 32)
    with pytest.raises(DataError, match=r"vqa.jsonl: line 2: field 'image': cannot read image"):
        list(load_vqa(path))
    path.write_text(json.dumps({"image": "a.png", "question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"line 1: field 'target': missing"):
        list(load_vqa(path))
    path.write_text(json.dumps({**good, "image": "nope.png"}) + "\n")
    with pytest.raises(DataError, match=r"line 1: field 'image': no such image file"):
        list(load_vqa(path))
    report = SkipReport()
    assert list(load_vqa(path, skip_invalid=True, report=report)) == [] and report.total == 1
    assert len(list(load_vqa("shapesvqa", split="validation", limit=5))) == 5


def test_optimize_swaps_the_text_model_and_moves_the_tower(tmp_path):
    from encore import deoptimize, optimize

    vlm = make_vlm("encdec")
    ids, px = torch.tensor([vlm.image_prompt([300, 301])]), pixels(1)
    before = vlm.generate(ids, pixel_values=px, max_new_tokens=6, eos_token_id=None)
    assert optimize(vlm) is vlm and vlm.lm._encore_optimized is not None
    assert not any(p.requires_grad for p in vlm.vision.parameters())
    assert vlm.generate(ids, pixel_values=px, max_new_tokens=6, eos_token_id=None).shape == before.shape
    with pytest.raises(ValueError, match="deoptimize"):
        vlm.save_pretrained(tmp_path / "m")
    deoptimize(vlm)
    vlm.save_pretrained(tmp_path / "m")
    assert torch.equal(
        encore.load(tmp_path / "m").generate(ids, pixel_values=px, max_new_tokens=6, eos_token_id=None), before
    )
