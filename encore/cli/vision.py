"""The vision flags of `encore finetune | eval | generate`: a text model + `--vision` becomes a
`VisionLanguageModel`; image tasks (shapesvqa, a JSONL of image records) become batches with pixels.

Wiring only: the model is `encore.model.vlm`, the data `encore.data.vqa`, generation `encore.infer.vision`.
"""

from __future__ import annotations

import argparse
from typing import Any

from encore.cli.common import task_options
from encore.data.vqa import is_vision_task


def add_vision_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("vision-language (image tasks: shapesvqa, or a JSONL of image records)")
    g.add_argument(
        "--vision",
        default=None,
        help="image tower: a preset (vit-tiny, clip-vit-l-336, siglip-base) or a "
        "VisionConfig .json; turns the text model into a VisionLanguageModel",
    )
    g.add_argument("--vision-tower", default=None, help="pretrained tower weights: a hub id or a directory")
    g.add_argument("--train-vision", action="store_true", help="tune the tower too (default: frozen)")
    g.add_argument("--image-keep", type=float, default=1.0, help="fraction of image tokens kept, in (0, 1]")
    g.add_argument(
        "--selection",
        choices=["variance", "uniform", "learned"],
        default="variance",
        help="which image tokens are kept (before the projector)",
    )


def vision_config(args: argparse.Namespace) -> Any:
    from encore.vision import VisionConfig

    config = VisionConfig.resolve(args.vision)
    if args.vision_tower:
        from encore.files import check_local

        check_local(args.vision_tower, "--vision-tower")
        config.tower = args.vision_tower
    config.freeze_tower = not args.train_vision
    return config


def with_vision(args: argparse.Namespace, model: Any) -> Any:
    """The model the flags ask for: a text model + `--vision` -> a VisionLanguageModel (seeded); a
    vision checkpoint stays as it is. An image task without images is refused here."""
    import torch

    from encore.model.vlm import IMAGE_TOKEN, VisionLanguageModel

    if isinstance(model, VisionLanguageModel):
        if args.vision:
            raise ValueError(f"--model {args.model} is already a vision-language checkpoint: drop --vision")
        return model
    if not args.vision:
        if is_vision_task(args.task):
            raise ValueError(f"--task {args.task} needs images: pass --vision (e.g. --vision vit-tiny)")
        return model
    image_token_id = model.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id is None or image_token_id == model.tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token: a vision-language model needs one")
    torch.manual_seed(args.seed)
    return VisionLanguageModel(
        model.config, vision_config(args), args.image_keep, args.selection, image_token_id, lm=model
    )


def vision_sources(args: argparse.Namespace, model: Any) -> tuple[Any, Any, Any]:
    """(training source, validation source or None, collator) of an image task for `model`."""
    from encore.data import TaskSource, finetune_collator, tokenize_pairs
    from encore.data.vqa import VisionCollator, load_vqa
    from encore.vision import preprocess

    k = len(model.image_block)
    text = finetune_collator(
        model.config,
        max_source_len=args.max_source_len + k,  # the image's placeholders come on top of the text's room
        max_target_len=args.max_target_len,
        truncation="right" if args.truncation == "left" else args.truncation,  # never cut the placeholders
    )
    collator = VisionCollator(text, lambda images: preprocess(images, model.vision_config), model.image_block)
    options = task_options(args)
    examples = tokenize_pairs(model.tokenizer, load_vqa(args.task, split="train", limit=args.limit, **options))
    print(f"{args.task}: {len(examples)} training examples with images, {model.n_image_tokens} image tokens each")
    eval_source = None
    if args.eval_every:
        val = tokenize_pairs(model.tokenizer, load_vqa(args.task, split=args.eval_split, **options))
        eval_source = TaskSource(val, collator, shuffle=False, repeat=False)
    return TaskSource(examples, collator, seed=args.seed), eval_source, collator
