"""A checkpoint's image tower -> `encore.VisionLanguageModel` around the text model its family's
adapter built (T5Gemma 2: SigLIP + Gemma 3's pooling projector; `StateDictAdapter.vision_from_hf`).

    vlm = encore.load("t5gemma-2-270m-270m", vision=True)      # tower and projector too
    ids = vlm.image_prompt(tokenizer.encode(question))          # <start_of_image>, 256 <image>, <end_of_image>, text
    new = vlm.generate(torch.tensor([ids]), pixel_values=preprocess([image], vlm.vision_config))

Without `vision=True` the same checkpoint loads as its text model (no tower in memory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from encore.convert.adapter import ConversionError, StateDictAdapter
from encore.model.base import LanguageModel
from encore.model.vlm import VisionLanguageModel


def with_vision(
    lm: LanguageModel,
    adapter: StateDictAdapter,
    hf: dict[str, Any],
    get: Callable[[str], Tensor],
    names: list[str],
    where: str,
) -> VisionLanguageModel:
    """`lm` with the checkpoint's tower and projector (`names`: the checkpoint's tensor names, as on disk)."""
    if adapter.vision_prefix is None or not any(n.startswith(adapter.vision_prefix) for n in names):
        raise ConversionError(f"{where}: no image tower in this checkpoint ({hf.get('model_type')}): load it as text")
    vision, ids = adapter.vision_from_hf(hf, lm.tokenizer)
    vlm = VisionLanguageModel(lm.config, vision, lm=lm, **ids)
    state = dict(adapter.vision_tensors(get, names))
    try:
        missing, unexpected = vlm.vision.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape that does not match the config
        raise ConversionError(f"{where}: the image tower's tensors do not match its config ({str(e)[:300]})") from None
    if missing or unexpected:
        raise ConversionError(f"{where}: image tower tensors missing {missing[:3]}, unexpected {unexpected[:3]}")
    vlm.vision.to(device=lm.embed.weight.device, dtype=lm.embed.weight.dtype)
    return vlm.eval()
