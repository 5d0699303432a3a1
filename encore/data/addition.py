"""`addition`: n-digit addition with spaced digits (one token per digit), an embedded task that a small
model learns in minutes on a CPU, and learns faster the larger it is: what `encore reproduce` uses
to measure distillation (a teacher that clearly beats its student) and architectures at tiny scale.

    {"source": "4 7 1 + 3 9 2", "target": "8 6 3"}

Operands are drawn uniformly from [0, 10**digits) per example (seeded by split, index and seed, so
splits never share a stream), written with leading zeros so every source has the same length; the
sum is written without them. Sizes: train 20,000, validation 1,000, test 1,000 (`size=` changes one).
`offset=k` changes the task to a + b + k (the same sources): a teacher trained on it knows something
the gold targets of the plain task do not say, which is how distillation's transfer is tested.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

SPLITS = {"train": 20_000, "validation": 1_000, "test": 1_000}


def example(split: str, index: int, seed: int = 0, digits: int = 3, offset: int = 0) -> dict[str, str]:
    rng = random.Random(f"addition/{seed}/{split}/{index}")
    a, b = rng.randrange(10**digits), rng.randrange(10**digits)
    spaced = lambda n, width=0: " ".join(str(n).zfill(width))
    return {"source": f"{spaced(a, digits)} + {spaced(b, digits)}", "target": spaced(a + b + offset)}


def load(
    split: str = "train", *, size: int | None = None, seed: int = 0, digits: int = 3, offset: int = 0
) -> Iterator[dict]:
    if split not in SPLITS:
        raise ValueError(f"addition has no split {split!r}; splits: {', '.join(SPLITS)}")
    if not isinstance(digits, int) or not 1 <= digits <= 12:
        raise ValueError(f"addition: digits must be an integer in 1..12, got {digits!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"addition: offset must be a non-negative integer, got {offset!r}")
    n = SPLITS[split] if size is None else size
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"addition: size must be a non-negative integer, got {n!r}")
    return (example(split, i, seed, digits, offset) for i in range(n))
