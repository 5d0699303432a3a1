"""`OnnxGenerator`: an exported encore model generating through onnxruntime, with numpy, onnxruntime
and tokenizers only (torch is never imported, so a deployment can leave it out).

    gen = OnnxGenerator("exported/", provider="cpu")          # or "cuda", "qnn", "openvino", "coreml", "dml"
    new = gen.generate(input_ids, attention_mask, max_new_tokens=64)   # numpy int64 [B, 64]
    text = gen.generate_text("def add(a, b): return a + b")

The contract of `LanguageModel.generate`: new tokens only; a row that produced EOS is padded after it;
left- or right-padded batches; greedy unless `do_sample`. The loop is the torch engine's: the
encoder-decoder encodes once (the cross K/V of every decoder layer) and feeds BOS; the decoder-only
model prefills right-padded prompts; then one `decoder_step` per token, each row writing its K/V at its
own position (`positions`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from encore.config import lay_out_source  # stdlib only: no torch
from encore.infer.search import Beams, Search, log_softmax, numpy_candidates  # numpy only
from encore.onnx.manifest import Manifest
from encore.onnx.sampling import check_sampling, sample_next

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}
_FROM_MANIFEST = object()


def provider_name(provider: str) -> str:
    """A short name ("cpu", "qnn", ...) or any onnxruntime provider name -> the one this onnxruntime
    has; a ValueError listing the available ones otherwise."""
    import onnxruntime as ort

    name = PROVIDERS.get(provider.lower(), provider)
    available = ort.get_available_providers()
    if name not in available:
        short = {v: k for k, v in PROVIDERS.items()}
        listed = ", ".join(f"{short[a]} ({a})" if a in short else a for a in available)
        raise ValueError(f"provider {provider!r} ({name}) is not available in this onnxruntime; available: {listed}")
    return name


def open_sessions(
    directory: Path,
    manifest: Manifest,
    provider: str = "cpu",
    provider_options: dict[str, Any] | None = None,
    threads: int | None = None,
    spin: bool = True,
) -> tuple[str, dict[str, Any]]:
    """(the provider's onnxruntime name, an InferenceSession per graph of the export in `directory`).
    `spin=False`: onnxruntime's threads sleep between runs instead of spinning (a host loop that runs
    torch between the steps would otherwise wait for cores they hold)."""
    import onnxruntime as ort

    name = provider_name(provider)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[Any] = [(name, provider_options or {})]
    if name != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")  # what the accelerator cannot run falls back to the CPU
    sessions = {
        graph: ort.InferenceSession(str(directory / g["file"]), options, providers=providers)
        for graph, g in manifest.graphs.items()
    }
    return name, sessions


def run_step(session: Any, tokens: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
    """One `decoder_step`: logits [B, V]; writes the step's new K/V into `state`'s past buffers
    [L, B, K, T, Dh] at each row's position and moves the positions on."""
    feeds = {"tokens": tokens, "positions": state["positions"]}
    for name in ("past_k", "past_v", "cross_k", "cross_v"):
        if name in state:
            feeds.update({f"{name}.{i}": layer for i, layer in enumerate(state[name])})
    if "cross_mask" in state:
        feeds["cross_mask"] = state["cross_mask"]
    logits, new_k, new_v = session.run(None, feeds)
    rows, positions = np.arange(tokens.shape[0]), state["positions"]
    # numpy puts the two indexed axes (row, position) first: values [B, L, K, Dh]
    state["past_k"][:, rows, :, positions] = new_k[:, :, :, 0].transpose(1, 0, 2, 3)
    state["past_v"][:, rows, :, positions] = new_v[:, :, :, 0].transpose(1, 0, 2, 3)
    state["positions"] = positions + 1
    return logits


class OnnxGenerator:
    def __init__(
        self,
        directory: str | Path,
        provider: str = "cpu",
        provider_options: dict[str, Any] | None = None,
        threads: int | None = None,
    ):
        self.directory = Path(directory)
        self.manifest = m = Manifest.read(self.directory)
        if m.encoder_input == "audio":
            raise ValueError(
                f"{self.directory}: a speech model's export; transcribe with encore.audio.onnx.OnnxWhisper "
                "(encore transcribe --model DIR)"
            )
        self.provider, self.sessions = open_sessions(self.directory, m, provider, provider_options, threads)
        self.pad, self.bos, self.eos = (m.special_ids[k] for k in ("pad", "bos", "eos"))
        self.eos_ids = [self.eos, *m.special_ids.get("extra_eos", [])]  # every id that ends a reply
        self.vocab_size = m.model["vocab_size"]
        self.tokenizer = None
        if m.tokenizer and (self.directory / m.tokenizer).is_file():
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(self.directory / m.tokenizer))

    # --- checks where data enters --------------------------------------------------------------------

    def _inputs(self, input_ids: Any, attention_mask: Any) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"input_ids must be an integer array [batch, seq_len], got {ids.dtype} {ids.shape}")
        if ids.size == 0:
            raise ValueError(f"input_ids is empty (shape {ids.shape}): need at least one token per row")
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            bad_id = ids[row, col]
            raise ValueError(f"input_ids[{row}, {col}] = {bad_id} is outside the vocabulary [0, {self.vocab_size})")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {mask.shape} but input_ids has shape {ids.shape}")
        empty = np.flatnonzero(~mask.astype(bool).any(axis=1))
        if empty.size:
            raise ValueError(f"attention_mask row {empty[0]} masks out every token: the input is empty")
        return ids.astype(np.int64), mask.astype(np.int64)

    # --- generation ------------------------------------------------------------------------------------

    def generate(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        max_new_tokens: int = 32,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
        num_return_sequences: int = 1,
        **kwargs: Any,
    ) -> np.ndarray:
        """New tokens, int64 [B, max_new_tokens]; positions after a row's EOS hold pad. Keyword
        arguments: `generate_stream`'s (eos_token_id, do_sample, temperature, top_k, top_p, seed).
        `num_beams` > 1: beam search, the torch loop's (`generate_beams`): [B * num_return_sequences, ...]."""
        beams = Beams(num_beams, length_penalty, early_stopping, num_return_sequences)
        if num_beams != 1 or num_return_sequences != 1:
            return self.generate_beams(input_ids, attention_mask, max_new_tokens, beams, **kwargs)[0]
        stream = self.generate_stream(input_ids, attention_mask, max_new_tokens, **kwargs)
        out = np.full((np.shape(input_ids)[0], max_new_tokens), self.pad, dtype=np.int64)
        for step, tokens in enumerate(stream):
            out[:, step] = tokens
        return out

    def generate_stream(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        max_new_tokens: int = 32,
        eos_token_id: Any = _FROM_MANIFEST,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield every row's new token [B] at each step (pad for rows already finished); stops after
        `max_new_tokens` or once every row produced EOS. Arguments are checked here, at call time."""
        ids, mask = self._inputs(input_ids, attention_mask)
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
        check_sampling(do_sample, temperature, top_k, top_p)
        eos = self.eos_ids if eos_token_id is _FROM_MANIFEST else eos_token_id
        rows = ids.shape[0]
        cache_tokens = max_new_tokens
        if self.manifest.static:
            ids, mask, cache_tokens = self._fit_static(ids, mask, max_new_tokens)
        choose = lambda logits, rng: sample_next(logits, do_sample, temperature, top_k, top_p, rng)
        return self._stream(ids, mask, rows, max_new_tokens, cache_tokens, eos, choose, np.random.default_rng(seed))

    def generate_beams(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        max_new_tokens: int = 32,
        beams: Beams | None = None,
        eos_token_id: Any = _FROM_MANIFEST,
        do_sample: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Beam search (`encore.infer.search`, transformers' results as in torch): (tokens int64
        [B * R, max_new_tokens], pad after each one's end; their length-penalised scores [B * R]), each
        input's R = `num_return_sequences` best first. Each input is encoded once; its K beams are rows
        of the step's state that follow their hypotheses."""
        ids, mask = self._inputs(input_ids, attention_mask)
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1 for beam search, got {max_new_tokens!r}")
        beams = (beams or Beams()).check(do_sample)
        if self.manifest.static:
            raise ValueError("beam search needs a dynamic export: this one is static (--static fixes its batch)")
        eos = self.eos_ids if eos_token_id is _FROM_MANIFEST else eos_token_id
        eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
        B, K = ids.shape[0], beams.num_beams
        logits, state = self._prefill(ids, mask, max_new_tokens)
        rows = np.repeat(np.arange(B), K)  # each input's K beams
        state = {name: a[:, rows] if a.ndim == 5 else a[rows] for name, a in state.items()}
        search = Search(B, K, logits.shape[-1], max_new_tokens, beams, eos)
        logits = logits[rows]
        for step in range(max_new_tokens):
            if step:
                logits = self._step(search.tokens(), state)
            source = search.advance(*numpy_candidates(log_softmax(logits), search), step)
            if not search.going(step):
                break
            # the hypotheses of an input share its positions and cross K/V: only the self K/V follow them
            state["past_k"], state["past_v"] = state["past_k"][:, source], state["past_v"][:, source]
        return search.result(self.pad)

    def _stream(
        self, ids: np.ndarray, mask: np.ndarray, rows: int, n: int, cache_tokens: int, eos: Any, choose, rng
    ) -> Iterator[np.ndarray]:
        if n == 0:
            return
        logits, state = self._prefill(ids, mask, cache_tokens)
        finished = np.zeros(ids.shape[0], dtype=bool)
        for step in range(n):
            tokens = choose(logits, rng)
            tokens[finished] = self.pad
            yield tokens[:rows]
            if eos is not None:
                finished |= np.isin(tokens, eos)
                if finished[:rows].all():
                    return
            if step + 1 < n:
                logits = self._step(tokens, state)

    def _fit_static(self, ids: np.ndarray, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Pad a batch to a `--static` export's fixed batch and input length (extra rows hold one token)."""
        s = self.manifest.static
        B, S = ids.shape
        if B > s["batch_size"] or S > s["max_input_len"] or n > s["max_new_tokens"]:
            raise ValueError(
                f"this export is static (batch {s['batch_size']}, input {s['max_input_len']}, new tokens "
                f"{s['max_new_tokens']}); got batch {B}, input {S}, max_new_tokens {n}"
            )
        fixed_ids = np.full((s["batch_size"], s["max_input_len"]), self.pad, dtype=np.int64)
        fixed_mask = np.zeros_like(fixed_ids)
        fixed_ids[:B, :S], fixed_mask[:B, :S] = ids, mask
        fixed_mask[B:, 0] = 1
        return fixed_ids, fixed_mask, s["max_new_tokens"]

    def _prefill(self, ids: np.ndarray, mask: np.ndarray, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """First logits [B, V] and the step's state: positions, the past K/V buffers [L, B, K, T, Dh]
        (and the cross K/V, mask)."""
        m = self.manifest.model
        B = ids.shape[0]
        shape = lambda t: (m["n_decoder_layers"], B, m["n_kv_heads"], t, m["head_dim"])
        if self.manifest.arch == "encdec":
            cross_k, cross_v = self.sessions["encoder"].run(None, {"input_ids": ids, "attention_mask": mask})
            state = {"positions": np.zeros(B, dtype=np.int64), "past_k": np.zeros(shape(n), dtype=np.float32)}
            state.update(past_v=np.zeros_like(state["past_k"]), cross_k=cross_k, cross_v=cross_v, cross_mask=mask)
            return self._step(np.full(B, self.bos, dtype=np.int64), state), state
        # decoder-only: right-padded prompts (each row's tokens at positions 0 .. n_b - 1)
        order = np.argsort(1 - mask, axis=1, kind="stable")
        ids, lengths = np.take_along_axis(ids, order, axis=1), mask.sum(axis=1)
        logits, k, v = self.sessions["prefill"].run(None, {"input_ids": ids, "lengths": lengths})
        S = ids.shape[1]
        state = {"positions": lengths, "past_k": np.zeros(shape(S + n), dtype=np.float32)}
        state["past_v"] = np.zeros_like(state["past_k"])
        state["past_k"][:, :, :, :S], state["past_v"][:, :, :, :S] = k, v
        return logits, state

    def _step(self, tokens: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        """One decoder step; writes its new K/V into the past buffers at each row's position."""
        return run_step(self.sessions["decoder_step"], tokens, state)

    # --- text ---------------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """A source as the model's input ids, laid out as the model's collators lay it out
        (`encore.ModelConfig.source_ids`): encore's encoder-decoder `x + [EOS]`, decoder-only
        `[BOS] + x + [EOS]`; an imported family's `[BOS] + x` ("bos"), `x` ("plain") or its tokenizer's
        own special tokens around `x` ("template")."""
        if self.tokenizer is None:
            raise ValueError(f"{self.directory}: no tokenizer.json beside the graphs; pass token ids to generate()")
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        prefix, suffix = self.manifest.source_template or [[], []]
        return lay_out_source(
            ids, self.manifest.source_layout, self.manifest.arch, self.bos, self.eos, (prefix, suffix)
        )

    def generate_text(self, texts: str | list[str], max_new_tokens: int = 64, **kwargs: Any) -> str | list[str]:
        """Generate for one text or a list (right-padded batch); returns the decoded new text(s)."""
        single = isinstance(texts, str)
        rows = [self.encode(t) for t in ([texts] if single else texts)]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        new = self.generate(ids, mask, max_new_tokens=max_new_tokens, **kwargs)
        out = []
        for row in new.tolist():
            stop = [row.index(i) for i in self.eos_ids if i in row]
            row = row[: min(stop)] if stop else row
            out.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return out[0] if single else out
