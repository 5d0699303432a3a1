"""Images + questions in, answers out: the vision-language counterpart of `encore.infer.pipeline`
(used by `encore eval` / `encore generate` on a vision-language checkpoint).

Each question is laid out as in fine-tuning (`VisionLanguageModel.image_prompt`: k placeholders, the
text, the specials), cut at `max_source_len` text tokens, and generated in batches through
`VisionLanguageModel.generate` (image tokens computed once per image, in the prefill).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from encore.infer.pipeline import GenerationOptions
from encore.tokenizer import encode_text
from encore.vision.tower import preprocess


def answer_images(
    vlm: Any,
    images: list[Any],
    questions: list[str],
    options: GenerationOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[str], int]:
    """(answers in input order, how many questions were truncated)."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions")
    options = options or GenerationOptions()
    room = options.max_source_len - len(vlm.config.source_ids([]))  # the layout's special tokens
    if room < 1:
        raise ValueError(f"--max-source-len {options.max_source_len} leaves no room next to the special tokens")
    texts: list[str] = []
    truncated = 0
    for start in range(0, len(questions), options.batch_size):
        rows = []
        for question in questions[start : start + options.batch_size]:
            ids = encode_text(vlm.tokenizer, question)
            truncated += len(ids) > room
            rows.append(torch.tensor(vlm.image_prompt(ids[:room])))
        ids = pad_sequence(rows, batch_first=True, padding_value=vlm.config.pad_token_id)
        mask = pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
        pixels = preprocess(images[start : start + options.batch_size], vlm.vision_config)
        new = vlm.generate(
            ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=options.max_new_tokens, **options.sampling()
        )
        texts += [vlm.tokenizer.decode(row.tolist(), skip_special_tokens=True).strip() for row in new]
        if progress is not None:
            progress(len(rows))
    return texts, truncated
