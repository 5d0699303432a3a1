"""Choosing the next token: greedy, or sampled with temperature, top-k and top-p (nucleus), seeded.

`Sampling` holds one request's settings and checks them where they enter (`generate`, `Engine.add`);
`sample_next` runs on the device with no host read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class _FromConfig:
    def __repr__(self) -> str:
        return "<config's eos_token_id>"


FROM_CONFIG = _FromConfig()  # default for eos_token_id; None disables stopping


def resolve_eos(eos_token_id, config) -> tuple[int, ...] | None:
    """The ids that end a row: the config's (`eos_token_ids`, all of a checkpoint's EOS ids) by default,
    an id or a list of ids as given, None for none. Raises ValueError naming an id out of the vocabulary."""
    if eos_token_id is FROM_CONFIG:
        return config.eos_token_ids
    if eos_token_id is None:
        return None
    ids = (eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < config.vocab_size:
            raise ValueError(f"eos_token_id {i!r} is not a token id in [0, {config.vocab_size})")
    return ids


@dataclass(frozen=True)
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def check(self) -> Sampling:
        """Raise ValueError naming the setting that is out of range; returns self."""
        if self.do_sample:
            if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
                raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature!r}")
            if self.top_k is not None and not (isinstance(self.top_k, int) and self.top_k >= 1):
                raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
            if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
                raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        return self

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A generator seeded with `seed` (None: torch's global one)."""
        if not self.do_sample or self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)

    def choose(self, logits: Tensor, generator: torch.Generator | None) -> Tensor:
        return sample_next(logits, self.do_sample, self.temperature, self.top_k, self.top_p, generator)


MIN_TEMPERATURE = 1e-5


def sample_next(
    logits: Tensor,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """logits [B, V] -> token ids [B]. Greedy unless do_sample; top-k then top-p (nucleus) filtering. A
    temperature under `MIN_TEMPERATURE` is greedy, its limit (dividing by it would overflow: vLLM's rule)."""
    if not do_sample or temperature < MIN_TEMPERATURE:
        return logits.argmax(dim=-1)
    # an overflowed logit (a repetition penalty of 1e-300 divides by it) is the largest finite one, NaN
    # none: the softmax below stays a distribution
    logits = (logits.float() / temperature).nan_to_num(nan=float("-inf"), posinf=torch.finfo(torch.float32).max)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already cover top_p (the top one always stays)
        drop = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop[:, 0] = False  # (a top_p that rounds to 0 in float32 would drop it too)
        logits = logits.masked_fill(drop.scatter(1, sorted_idx, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def step_logprobs(requests: list, raw: Tensor, processed: Tensor, chosen: Tensor) -> dict[int, tuple[float, list]]:
    """For the engine's requests that asked (`logprobs` N, or None): (the chosen token's log-prob, the N
    likeliest (token, log-prob)), under the model's own distribution `raw` (before processors and
    temperature, as vLLM reports them), or `processed` for a request whose `processed_logprobs` is set."""
    asked = [i for i, r in enumerate(requests) if r.logprobs is not None]
    if not asked:
        return {}
    rows = [(processed if requests[i].processed_logprobs else raw)[i] for i in asked]
    lp = torch.log_softmax(torch.stack(rows).float(), dim=-1)
    picked = lp.gather(1, chosen[asked, None])[:, 0].tolist()
    out = {}
    for row, (i, value) in enumerate(zip(asked, picked)):
        n = requests[i].logprobs
        top = lp[row].topk(n) if n else None
        out[i] = (value, [] if top is None else list(zip(top.indices.tolist(), top.values.tolist())))
    return out
