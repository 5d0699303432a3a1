"""encore.vision (first part): VisionConfig presets and JSON round trip, token counts per image_keep,
what each selection keeps, gradients of the learned scorer, preprocessing."""

import pytest
import torch

from encore.data import shapesvqa
from encore.vision import ImageEncoder, VisionConfig, preprocess, select


def test_presets_have_the_towers_token_counts(tmp_path):
    assert VisionConfig.preset("clip-vit-l-336").tokens == 577  # LLaVA's: 24 x 24 patches + CLS
    assert VisionConfig.preset("siglip-base").tokens == 196
    tiny = VisionConfig.preset("vit-tiny")
    assert tiny.tokens == 65 and [tiny.kept(k) for k in (1.0, 0.33, 0.1)] == [65, 22, 7]
    tiny.save(tmp_path / "v.json")
    assert VisionConfig.load(tmp_path / "v.json") == tiny
    with pytest.raises(ValueError, match="unknown vision preset"):
        VisionConfig.preset("vit-huge")
    with pytest.raises(ValueError, match="no field"):
        VisionConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="patch_size"):
        VisionConfig(image_size=64, patch_size=7).validate()


def test_each_selection_keeps_what_it_says():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 10, 8, generator=g)
    features[0, 7] *= 10  # token 7 of image 0 and token 2 of image 1 vary most
    features[1, 2] *= 10
    kept = select(features, 3, "variance")
    variance = features.var(dim=-1)
    for b in range(2):
        index = variance[b].topk(3).indices.sort().values
        assert torch.equal(kept[b], features[b, index])  # the top-3 by variance, in raster order
    assert torch.equal(select(features, 4, "uniform"), features[:, [0, 3, 6, 9]])
    assert torch.equal(select(features, 10, "variance"), features)
    scorer = torch.nn.Linear(8, 1)
    out = select(features, 3, "learned", scorer)
    out.sum().backward()
    assert out.shape == (2, 3, 8) and scorer.weight.grad is not None and scorer.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="selection"):
        select(features, 3, "random")


@pytest.mark.parametrize("keep,selection", [(1.0, "variance"), (0.33, "variance"), (0.1, "uniform"), (0.33, "learned")])
def test_image_encoder_gives_k_tokens_of_d_model(keep, selection):
    torch.manual_seed(0)
    config = VisionConfig.preset("vit-tiny")
    encoder = ImageEncoder(config, d_model=32, image_keep=keep, selection=selection)
    images = [shapesvqa.generate_example("train", i).image(64) for i in range(2)]
    tokens = encoder(preprocess(images, config))
    assert tokens.shape == (2, config.kept(keep), 32) and encoder.tokens == config.kept(keep)
    assert not any(p.requires_grad for p in encoder.tower.parameters())  # frozen by default
    assert all(p.requires_grad for p in encoder.projector.parameters())
    with pytest.raises(ValueError, match=r"pixel_values must be \[B, 3, 64, 64\]"):
        encoder(torch.zeros(2, 3, 32, 32))


def test_preprocess_normalises_like_the_tower():
    config = VisionConfig.preset("vit-tiny")
    from PIL import Image

    white = Image.new("RGB", (100, 80), (255, 255, 255))
    pixels = preprocess([white], config)
    mean, std = config.mean_std
    assert pixels.shape == (1, 3, 64, 64)
    assert torch.allclose(pixels[0, :, 0, 0], (1 - torch.tensor(mean)) / torch.tensor(std))
    with pytest.raises(ValueError, match="image_keep"):
        ImageEncoder(config, 32, image_keep=0)
