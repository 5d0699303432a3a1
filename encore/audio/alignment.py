"""Word timestamps from the cross-attention, as openai/whisper finds them: the window's text is read
again by the decoder (teacher-forced, on the window's cached cross K/V), the attention of the
checkpoint's alignment heads over the audio frames is normalized and median-filtered, and dynamic time
warping pairs each token with the frames where it is spoken; a word starts where its first token's path
starts. Token probabilities come from the same pass."""

from __future__ import annotations

import string
from typing import Any

import numpy as np
import torch
from torch import Tensor

from encore.audio.features import TOKEN_SECONDS
from encore.audio.tokens import WhisperTokens

MEDIAN_WIDTH = 7
PREPENDED = "\"'“¿([{-"
APPENDED = "\"'.。,，!！?？:：”)]}、"


def alignment_heads(model: Any) -> list[tuple[int, int]]:
    """(decoder layer, head) pairs whose cross-attention follows the speech: the checkpoint's, else
    every head of the decoder's last half (openai's default)."""
    heads = model.generation_config.get("alignment_heads")
    if heads:
        return [(int(layer), int(head)) for layer, head in heads]
    n = model.config.n_decoder_layers
    return [(layer, head) for layer in range(n // 2, n) for head in range(model.config.n_heads)]


@torch.inference_mode()
def find_words(
    model: Any, tokens: WhisperTokens, start: list[int], text: list[int], cross: tuple[Tensor, Tensor], frames: int
) -> list[dict[str, Any]]:
    """Words of a window's `text` tokens: [{"word", "start", "end", "probability", "tokens"}], times in
    seconds from the window's start. `start`: the window's start tokens without timestamps (ending in
    <|notimestamps|>); `cross`: its cross K/V [L, 1, K, S, Dh]; `frames`: its mel frames of audio."""
    if not text:
        return []
    sequence = [*start, *text, tokens.eot]
    weights, logits = _cross_attention(model, sequence, cross, alignment_heads(model))
    weights = weights[:, :, : max(1, frames // 2)].softmax(dim=-1)  # [A, T, S]: the window's audio only
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = _median_filter((weights - mean) / std, MEDIAN_WIDTH)
    matrix = weights.mean(dim=0)[len(start) - 1 : -1]  # the rows that predict the text tokens and EOT
    token_rows, frame_columns = dtw(-matrix.double().numpy())
    probs = logits[len(start) - 1 : len(start) - 1 + len(text), : tokens.eot].float().softmax(dim=-1)
    probs = probs.gather(1, torch.tensor(text)[:, None])[:, 0].tolist()
    words, pieces = split_to_words(model.tokenizer, [*text, tokens.eot], tokens.eot)
    boundaries = np.pad(np.cumsum([len(p) for p in pieces[:-1]]), (1, 0))
    jumps = np.pad(np.diff(token_rows), (1, 0), constant_values=1).astype(bool)
    times = frame_columns[jumps] * TOKEN_SECONDS  # where each row's path starts
    out: list[dict[str, Any]] = []
    for i, (word, piece) in enumerate(zip(words[:-1], pieces[:-1])):  # the last piece is EOT
        first, last = boundaries[i], boundaries[i + 1]
        out.append({
            "word": word, "start": round(float(times[first]), 3), "end": round(float(times[last]), 3),
            "probability": float(np.mean(probs[first:last])), "tokens": piece,
        })  # fmt: skip
    return merge_punctuation(_clip_at_sentence_ends(out))


def median_duration(words: list[dict[str, Any]]) -> float:
    """openai's yardstick for a word's length: the median non-zero duration, at most 0.7 s."""
    durations = [w["end"] - w["start"] for w in words if w["end"] > w["start"]]
    return min(0.7, float(np.median(durations))) if durations else 0.0


def _clip_at_sentence_ends(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A word longer than twice the median next to a sentence end is cut to that (openai's heuristic)."""
    longest = 2 * median_duration(words)
    for before, word in zip(words, words[1:]):
        if longest and word["end"] - word["start"] > longest:
            if word["word"] in ".。!！?？":
                word["end"] = word["start"] + longest
            elif before["word"] in ".。!！?？":
                word["start"] = word["end"] - longest
    return words


def fit_to_segment(words: list[dict[str, Any]], segment: dict[str, Any], last_speech: float, median: float) -> None:
    """openai's boundary heuristics: after a pause the first word is at most twice the median long, and a
    segment's start / end and its first / last word's agree (the closer to the words wins)."""
    if not words:
        return
    longest = 2 * median
    first = words[0]
    if first["end"] - last_speech > 4 * median and (
        first["end"] - first["start"] > longest or (len(words) > 1 and words[1]["end"] - first["start"] > 2 * longest)
    ):
        if len(words) > 1 and words[1]["end"] - words[1]["start"] > longest:
            boundary = max(words[1]["end"] / 2, words[1]["end"] - longest)
            first["end"] = words[1]["start"] = boundary
        first["start"] = max(0.0, first["end"] - longest)
    if segment["start"] < first["end"] and segment["start"] - 0.5 > first["start"]:
        first["start"] = max(0.0, min(first["end"] - median, segment["start"]))
    else:
        segment["start"] = first["start"]
    last = words[-1]
    if segment["end"] > last["start"] and segment["end"] + 0.5 < last["end"]:
        last["end"] = max(last["start"] + median, segment["end"])
    else:
        segment["end"] = last["end"]
    for w in words:
        w["start"], w["end"] = round(w["start"], 3), round(w["end"], 3)


def _cross_attention(
    model: Any, sequence: list[int], cross: tuple[Tensor, Tensor], heads: list[tuple[int, int]]
) -> tuple[Tensor, Tensor]:
    """(the alignment heads' cross-attention logits [A, T, S], the next-token logits [T, V]) of one
    teacher-forced pass over `sequence`, on the cached cross K/V."""
    cache = model.new_cache(1, 0, len(sequence))
    cache.cross_k, cache.cross_v = cross
    captured: dict[int, Tensor] = {}

    def capture(layer: int):
        def hook(module: Any, args: tuple, output: Tensor) -> None:
            x, k = args[0], args[1]  # [1, T, D], [1, K, S, Dh]
            B, T, _ = x.shape
            q = module.q_norm(module.q(x).view(B, T, module.n_heads, module.head_dim).transpose(1, 2))
            k = k.float().repeat_interleave(module.n_heads // k.shape[1], dim=1)
            captured[layer] = (q @ k.transpose(-1, -2))[0] * module.head_dim**-0.5  # [H, T, S]

        return hook

    layers = sorted({layer for layer, _ in heads})
    hooks = [model.decoder[layer].cross.register_forward_hook(capture(layer)) for layer in layers]
    try:
        ids = torch.tensor([sequence], dtype=torch.long, device=cross[0].device)
        logits = model.decode_prompt(ids, cache, logits_at=list(range(len(sequence))))[0]  # [T, V]
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack([captured[layer][head] for layer, head in heads]).float(), logits


def _median_filter(x: Tensor, width: int) -> Tensor:
    """A median over `width` neighbours along the last dimension, edges reflected (openai's)."""
    if x.shape[-1] <= width // 2:
        return x
    padded = torch.nn.functional.pad(x, (width // 2, width // 2), mode="reflect")
    return padded.unfold(-1, width, 1).median(dim=-1).values


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through `cost` [N, M] from (0, 0) to (N-1, M-1): (rows, columns) of
    each step. Filled one anti-diagonal at a time (a cell needs the two before it), openai's tie rule."""
    N, M = cost.shape
    total = np.full((N + 1, M + 1), np.inf)
    total[0, 0] = 0.0
    trace = np.full((N + 1, M + 1), -1, dtype=np.int8)
    for d in range(2, N + M + 1):
        i = np.arange(max(1, d - M), min(N, d - 1) + 1)
        j = d - i
        c0, c1, c2 = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        step = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        total[i, j] = cost[i - 1, j - 1] + np.choose(step, [c0, c1, c2])
        trace[i, j] = step
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = N, M, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    rows, columns = np.array(path[::-1]).T
    return rows, columns


def split_to_words(tokenizer: Any, ids: list[int], eot: int) -> tuple[list[str], list[list[int]]]:
    """Words and their tokens: a word starts at a piece with a leading space, a punctuation piece or a
    special token (space-delimited languages; a piece is the tokens of whole characters)."""
    words: list[str] = []
    pieces: list[list[int]] = []
    current: list[int] = []
    for token in ids:
        current.append(token)
        text = tokenizer.decode(current) if token < eot else "<|endoftext|>"
        if "\ufffd" in text and token < eot:
            continue  # the token ends inside a character: wait for the rest
        new = token >= eot or text.startswith(" ") or text.strip() in string.punctuation or not words
        if new:
            words.append(text)
            pieces.append(current)
        else:
            words[-1] += text
            pieces[-1].extend(current)
        current = []
    return words, pieces


def merge_punctuation(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Opening marks (a spaced `"`, `(`, ...) join the word after them, closing marks (`.`, `,`, ...) the
    word before, keeping that word's times (openai's rule)."""
    words = [dict(w) for w in words]
    j = len(words) - 1
    for i in range(len(words) - 2, -1, -1):
        before, after = words[i], words[j]
        if before["word"].startswith(" ") and before["word"].strip() in PREPENDED:
            after["word"], after["tokens"] = before["word"] + after["word"], before["tokens"] + after["tokens"]
            before["word"], before["tokens"] = "", []
        else:
            j = i
    i = 0
    for j in range(1, len(words)):
        before, after = words[i], words[j]
        if not before["word"].endswith(" ") and after["word"] in APPENDED:
            before["word"], before["tokens"] = before["word"] + after["word"], before["tokens"] + after["tokens"]
            after["word"], after["tokens"] = "", []
        else:
            i = j
    return [w for w in words if w["word"]]
