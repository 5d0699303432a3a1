"""`OnnxWhisper`: a Whisper export (`encore export` on a Whisper model) transcribed through onnxruntime.

    whisper = OnnxWhisper("whisper-onnx/", provider="cpu")     # or "cuda", "openvino", "coreml", ...
    result = whisper.transcribe("talk.wav", beam_size=5)      # {"text", "segments", "language", ...}

The graphs compute (`encoder`: a 30-s window's log-mel frames -> every decoder layer's cross K/V;
`decoder_prompt`: the window's prompt in one pass; `decoder_step`: one token); everything around them
is `encore.audio.transcribe`, the loop the torch model runs: windows and seeking, the previous text as
prompt, the temperature fallback, Whisper's logit rules, openai's beam search, segments. This object
offers that loop the model calls it makes (`prefill`, `decode_step`, a cache whose rows a beam search
selects), so a transcription here and on the torch model differ only by the graphs' arithmetic.

The host side still imports torch (the log-mel front end and the loop are torch code); the graphs
themselves run anywhere onnxruntime does. Word timestamps (they read the decoder's cross-attention
weights) and batched windows (the torch engine) are not offered here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from encore.config import ModelConfig
from encore.onnx.manifest import Manifest
from encore.onnx.runtime import open_sessions, run_step


class OnnxCache:
    """A window's decoding state in numpy, as `onnx.runtime.run_step` reads it: past K/V buffers
    [L, B, K, T, Dh], each row's position, and the window's cross K/V [L, 1, K, S, Dh], which all its
    rows (a beam search's hypotheses) read."""

    def __init__(self, state: dict[str, np.ndarray]):
        self.state = state

    @property
    def cross_k(self) -> Tensor:
        return torch.from_numpy(self.state["cross_k"])

    @property
    def cross_v(self) -> Tensor:
        return torch.from_numpy(self.state["cross_v"])

    def select_rows(self, rows: Tensor, cross: bool = False) -> OnnxCache:
        """The rows `rows` [N] of this cache (copies of the self K/V): a beam search's hypotheses, still
        reading the window's one cross K/V (so `cross` changes nothing: one window serves every row)."""
        take = rows.cpu().numpy()
        state = {name: self.state[name][:, take] for name in ("past_k", "past_v")}
        state.update(positions=self.state["positions"][take], cross_k=self.state["cross_k"])
        state["cross_v"] = self.state["cross_v"]
        return OnnxCache(state)


class OnnxWhisper:
    """A Whisper export in `directory` on onnxruntime's `provider` (`encore.onnx.provider_name`'s short
    names or any provider name), offering `transcribe` as a Whisper model does."""

    def __init__(
        self,
        directory: str | Path,
        provider: str = "cpu",
        provider_options: dict[str, Any] | None = None,
        threads: int | None = None,
    ):
        from encore.tokenizer import auto_tokenizer

        self.directory = Path(directory)
        self.manifest = Manifest.read(self.directory)
        if self.manifest.encoder_input != "audio":
            raise ValueError(f"{self.directory}: a text model's export; generate with encore.onnx.OnnxGenerator")
        self.config = ModelConfig.load(self.directory / "config.json")
        generation = self.directory / "generation_config.json"
        self.generation_config = json.loads(generation.read_text()) if generation.is_file() else {}
        tokenizer = self.directory / "tokenizer.json"  # (a preset's random weights have none: no transcription)
        self.tokenizer = auto_tokenizer(self.directory) if tokenizer.is_file() else None
        # the loop's torch ops run between the graphs: onnxruntime's threads must not spin through them
        self.provider, self.sessions = open_sessions(
            self.directory, self.manifest, provider, provider_options, threads, spin=False
        )
        self.device = torch.device("cpu")  # where the loop's tensors live

    def transcribe(self, audio: Any, **options: Any) -> dict[str, Any]:
        """Speech -> {"text", "segments", "language", "duration"}: `encore.audio.transcribe`'s options,
        but for `word_timestamps` and `batch_size` > 1."""
        from encore.audio.transcribe import transcribe

        if options.get("word_timestamps"):
            raise ValueError("word_timestamps: an ONNX export has no cross-attention weights to align; "
                             "use the torch model")  # fmt: skip
        if options.get("batch_size", 1) != 1:
            raise ValueError("batch_size > 1 batches windows through the torch engine: use the torch model")
        return transcribe(self, audio, **options)

    def prefill(
        self,
        features: Tensor,
        attention_mask: Tensor | None,
        max_new_tokens: int,
        decoder_prompt: Tensor | None = None,
        logits_at: list[int] | None = None,
    ) -> tuple[Tensor, OnnxCache]:
        """`EncoderDecoder.prefill` for one window `features` [1, M, 3000]: the encoder, then the decoder's
        prompt [1, P] (BOS when None) in one pass; the last position's logits [1, V], or [1, n, V] at
        `logits_at`, and a cache for `max_new_tokens` more tokens."""
        B = features.shape[0]
        if B != 1:
            shape = tuple(features.shape)
            raise ValueError(f"an ONNX speech export decodes one window at a time, got features {shape}")
        if decoder_prompt is None:
            decoder_prompt = torch.full((B, 1), self.config.bos_token_id, dtype=torch.long)
        tokens = decoder_prompt.cpu().numpy().astype(np.int64)
        P = tokens.shape[1]
        at = [P - 1] if logits_at is None else [p % P for p in logits_at]
        frames = np.ascontiguousarray(features.detach().cpu().float().numpy())
        cross_k, cross_v = self.sessions["encoder"].run(None, {"input_features": frames})
        feeds = {"tokens": tokens, "logits_at": np.array([at] * B, dtype=np.int64), "cross_k": cross_k}
        logits, k, v = self.sessions["decoder_prompt"].run(None, {**feeds, "cross_v": cross_v})
        past = np.zeros((*k.shape[:3], P - 1 + max_new_tokens, k.shape[4]), dtype=np.float32)
        state = {"past_k": past, "past_v": np.zeros_like(past), "cross_k": cross_k, "cross_v": cross_v}
        state["past_k"][:, :, :, :P], state["past_v"][:, :, :, :P] = k, v
        state["positions"] = np.full(B, P, dtype=np.int64)
        logits = torch.from_numpy(logits)
        return (logits[:, 0] if logits_at is None else logits), OnnxCache(state)

    def decode_step(self, tokens: Tensor, cache: OnnxCache) -> Tensor:
        """The next logits [B, V] after `tokens` [B]; their K/V written into `cache`."""
        ids = tokens.cpu().numpy().astype(np.int64)
        return torch.from_numpy(run_step(self.sessions["decoder_step"], ids, cache.state))
