"""A vision-language model over either architecture: an image encoder (`encore.vision.ImageEncoder`:
tower -> token selection -> projector) whose `k` tokens replace `<image>` placeholders in the text
model's input embeddings.

    vlm = VisionLanguageModel(ModelConfig.preset("encdec-tiny"), VisionConfig.preset("vit-tiny"), image_keep=0.33)
    ids = vlm.image_prompt(question_ids)                   # k placeholders, then the question (+ specials)
    logits = vlm(ids, pixel_values, decoder_input_ids)     # encoder-decoder: [B, T_dec, V]
    new = vlm.generate(ids, pixel_values=pixel_values, max_new_tokens=8)

Where the image tokens go (T5Gemma 2 and LLaVA put them the same way, at placeholder positions):
- encoder-decoder: into the *encoder's* input. The bidirectional encoder reads them once with the
  question; the decoder sees them only through its cross-attention K/V, projected once per request,
  and its self-attention cache holds the output tokens alone.
- decoder-only (the LLaVA-style baseline): into the prompt. Every layer's K/V cache holds all `k`
  image tokens and every decode step attends over them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from encore.config import ModelConfig
from encore.files import atomic_write
from encore.model.arches import model_class
from encore.model.base import CONFIG_FILE, LanguageModel
from encore.model.inputs import check_ids
from encore.vision.config import VisionConfig
from encore.vision.tower import ImageEncoder

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_ID = 104  # encore tokenizers: after <pad> <s> </s> <unk> and the 100 sentinels (encore.tokenizer)
VISION_CONFIG_FILE = "vision_config.json"
VISION_WEIGHTS_FILE = "vision.safetensors"


class VisionLanguageModel(nn.Module):
    def __init__(
        self,
        text_config: ModelConfig,
        vision_config: VisionConfig,
        image_keep: float = 1.0,
        selection: str = "variance",
        image_token_id: int = IMAGE_TOKEN_ID,
        lm: LanguageModel | None = None,
        image_start_ids: list[int] | tuple[int, ...] = (),
        image_end_ids: list[int] | tuple[int, ...] = (),
    ):
        """`image_start_ids` / `image_end_ids`: tokens before / after an image's placeholders in a
        prompt (T5Gemma 2's processor: "\n\n" <start_of_image> ... <end_of_image> "\n\n"); none for
        encore's models."""
        super().__init__()
        ids = (("image_token_id", image_token_id), *(("image_start_ids", i) for i in image_start_ids),
               *(("image_end_ids", i) for i in image_end_ids))  # fmt: skip
        for name, value in ids:
            if not isinstance(value, int) or not 0 <= value < text_config.vocab_size:
                raise ValueError(f"{name}: {value!r} is not an id of the vocabulary [0, {text_config.vocab_size})")
        self.lm = lm if lm is not None else model_class(text_config.arch)(text_config)
        # image tokens enter the input embeddings: the encoder's width in an encoder-decoder
        self.vision = ImageEncoder(vision_config, text_config.encoder_width, image_keep, selection)
        self.image_token_id = image_token_id
        self.image_start_ids, self.image_end_ids = list(image_start_ids), list(image_end_ids)

    # --- what callers read ---------------------------------------------------------------------

    @property
    def config(self) -> ModelConfig:
        return self.lm.config

    @property
    def arch(self) -> str:
        return self.lm.arch

    @property
    def vision_config(self) -> VisionConfig:
        return self.vision.config

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self.lm.tokenizer = value

    @property
    def n_image_tokens(self) -> int:
        """k: image tokens per image (= placeholders per prompt)."""
        return self.vision.tokens

    def set_dropout(self, p: float) -> None:
        self.lm.set_dropout(p)

    def blocks(self) -> list[nn.Module]:
        """What FSDP shards one by one: the text model's layers (the tower stays whole)."""
        return self.lm.blocks()

    # --- inputs --------------------------------------------------------------------------------

    def image_prompt(self, ids: list[int]) -> list[int]:
        """Text ids (no specials) -> the input a generation reads: k placeholders (between the image's
        start and end tokens, where the model has them) before the text, laid out as the fine-tuning
        collators lay out a source (`ModelConfig.source_ids`)."""
        return self.config.source_ids([*self.image_block, *ids])

    @property
    def image_block(self) -> list[int]:
        """What stands for one image in a prompt: start ids + k placeholders + end ids."""
        return [*self.image_start_ids, *[self.image_token_id] * self.n_image_tokens, *self.image_end_ids]

    def check_inputs(self, input_ids: Tensor, pixel_values: Tensor | None, attention_mask: Tensor | None) -> None:
        """Placeholders must match the images: k per row with an image, none without. Reads on the host:
        runs where data enters (`generate`, the collator), not in `forward`."""
        check_ids(input_ids, attention_mask, self.config.vocab_size)
        placeholders = input_ids == self.image_token_id
        if attention_mask is not None:
            placeholders &= attention_mask.bool()
        counts = placeholders.sum(dim=1).tolist()
        if pixel_values is None:
            if any(counts):
                raise ValueError(f"input_ids hold {IMAGE_TOKEN} placeholders but no pixel_values were given")
            return
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} images but input_ids has {input_ids.shape[0]} rows"
            )
        for row, count in enumerate(counts):
            if count != self.n_image_tokens:
                raise ValueError(
                    f"input_ids row {row} holds {count} {IMAGE_TOKEN} placeholders; this model puts "
                    f"{self.n_image_tokens} image tokens per image (image_keep {self.vision.image_keep}): "
                    "build prompts with image_prompt()"
                )

    def image_tokens(self, pixel_values: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, k, d_model], k = ceil(image_keep * tower tokens)."""
        return self.vision(pixel_values.to(self.lm.embed.weight.dtype))

    def embed_inputs(self, input_ids: Tensor, pixel_values: Tensor | None) -> Tensor:
        """Token embeddings [B, S, D] with row b's image tokens at its placeholder positions, in order."""
        x = self.lm.input_embeddings()(input_ids)  # [B, S, D]
        if pixel_values is None:
            return x
        images = self.image_tokens(pixel_values).to(x.dtype)  # [B, k, D]
        return x.masked_scatter((input_ids == self.image_token_id)[..., None], images)

    # --- forward and generation ----------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Logits: encoder-decoder [B, T_dec, V] (teacher-forced on `decoder_input_ids`); decoder-only
        [B, S, V] over the prompt and answer (`kwargs`: DecoderOnly's `logits_mask`, `logits_to_keep`)."""
        embeds = self.embed_inputs(input_ids, pixel_values)
        if self.arch == "encdec":
            if decoder_input_ids is None:
                raise ValueError("an encoder-decoder VisionLanguageModel needs decoder_input_ids")
            return self.lm(input_ids, decoder_input_ids, attention_mask, decoder_attention_mask, inputs_embeds=embeds)
        return self.lm(input_ids, attention_mask, inputs_embeds=embeds, **kwargs)

    def _embeds_for_generation(
        self, input_ids: Tensor, pixel_values: Tensor | None, attention_mask: Tensor | None
    ) -> Tensor:
        self.check_inputs(input_ids, pixel_values, attention_mask)
        device = self.lm.embed.weight.device
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                pixels = None if pixel_values is None else pixel_values.to(device)
                return self.embed_inputs(input_ids.to(device), pixels)
        finally:
            self.train(was_training)

    def generate(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        max_new_tokens: int = 32,
        **kwargs: Any,
    ) -> Tensor:
        """New tokens [B, max_new_tokens], as `LanguageModel.generate` (same keyword arguments): the
        image tokens are computed once and enter the prefill (the encoder-decoder's cross K/V)."""
        from encore.infer.generate import generate

        embeds = self._embeds_for_generation(input_ids, pixel_values, attention_mask)
        return generate(self.lm, input_ids, attention_mask, max_new_tokens, inputs_embeds=embeds, **kwargs)

    def generate_stream(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        max_new_tokens: int = 32,
        **kwargs: Any,
    ) -> Iterator[Tensor]:
        from encore.infer.generate import generate_stream

        embeds = self._embeds_for_generation(input_ids, pixel_values, attention_mask)
        return generate_stream(self.lm, input_ids, attention_mask, max_new_tokens, inputs_embeds=embeds, **kwargs)

    # --- checkpoints ---------------------------------------------------------------------------

    def save_pretrained(
        self,
        directory: str | Path,
        format: str = "encore",
        dtype: torch.dtype | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """The text model's files (config.json, model.safetensors, tokenizer) + vision_config.json
        (the tower's shape, selection, image_keep, placeholder id) + vision.safetensors (tower,
        scorer, projector). `encore.load` sees vision_config.json and returns a VisionLanguageModel.
        `format="hf"`: the family's transformers checkpoint, tower included (T5Gemma 2's
        `AutoModelForSeq2SeqLM` files: `encore.convert.save_hf`). `state`: the weights to write in place
        of the model's own (gathered from shards), keyed as `state_dict` keys them."""
        from safetensors.torch import save_file

        if format == "hf":
            from encore.convert.save import save_hf

            self.lm.check_savable(format, dtype)
            return save_hf(self.lm, directory, dtype, vision=self)
        directory = Path(directory)
        part = lambda prefix: (
            None if state is None else {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )
        self.lm.save_pretrained(directory, format, dtype, state=part("lm."))  # checks the format and what can be saved
        vision = self.vision.state_dict() if state is None else part("vision.")
        state = {k: v.detach().contiguous().cpu().to(dtype or v.dtype) for k, v in vision.items()}
        atomic_write(directory / VISION_WEIGHTS_FILE, lambda p: save_file(state, p, metadata={"format": "pt"}))
        meta = {
            "vision": self.vision_config.to_dict(),
            "image_keep": self.vision.image_keep,
            "selection": self.vision.selection,
            "image_token_id": self.image_token_id,
            "image_start_ids": self.image_start_ids,
            "image_end_ids": self.image_end_ids,
        }
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        atomic_write(directory / VISION_CONFIG_FILE, lambda p: Path(p).write_text(text))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, **changes: Any
    ) -> VisionLanguageModel:
        """Load what `save_pretrained` wrote. The tower is built from the saved shape (never fetched
        again: its weights are in vision.safetensors)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        path = directory / VISION_CONFIG_FILE
        try:
            meta = json.loads(path.read_text())
            vision = VisionConfig.from_dict({**meta["vision"], "tower": None})
            keep, selection, image_token_id = meta["image_keep"], meta["selection"], meta["image_token_id"]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: missing or malformed field {e}") from None
        config = ModelConfig.load(directory / CONFIG_FILE)
        lm = model_class(config.arch).from_pretrained(directory, device=device, dtype=dtype, **changes)
        ends = meta.get("image_start_ids", []), meta.get("image_end_ids", [])  # (absent before T5Gemma 2)
        model = cls(lm.config, vision, keep, selection, image_token_id, lm, *ends)
        weights = directory / VISION_WEIGHTS_FILE
        try:
            state = load_file(str(weights))
        except (SafetensorError, FileNotFoundError) as e:
            raise ValueError(f"{weights}: not a readable safetensors file ({e})") from None
        try:
            missing, unexpected = model.vision.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a shape that does not match the config
            raise ValueError(f"{weights}: weights do not match {VISION_CONFIG_FILE} ({str(e).strip()[:300]})") from None
        if missing or unexpected:
            raise ValueError(
                f"{weights}: weights do not match {VISION_CONFIG_FILE} (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]})"
            )
        model.vision.to(device=device, dtype=dtype)
        return model.eval()
