"""Chunked prefill (docs/serve.md), measured on `encore.Engine`: 4 short requests decoding while one
2048-token prompt arrives at their 4th step; each short request's longest gap between tokens and the
long request's time to first token, without and with `prefill_chunk`. Random weights, int8, 2 threads
as the bench runs them; run nothing else meanwhile.

    python examples/chunked_prefill.py encdec-330m 256 [LONG_PROMPT_TOKENS]
    python examples/chunked_prefill.py deconly-330m 256
"""

import json
import sys
import time

import torch

from encore.cli.common import load_for_inference
from encore.infer.engine import Engine

SHORT, SHORT_NEW, LONG, LONG_NEW, ARRIVE = 64, 48, 2048, 4, 4


def run(model, chunk):
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(10, 8000, (n,), generator=g).tolist()  # noqa: E731
    engine = Engine(model, max_batch=5, max_input_len=LONG, max_new_tokens=SHORT_NEW, prefill_chunk=chunk)
    short = [engine.add(ids(SHORT), max_new_tokens=SHORT_NEW, eos_token_id=None) for _ in range(4)]
    stamps = {r: [] for r in short}
    long_id, added, step, steps = None, None, 0, []
    while engine.has_work():
        if step == ARRIVE:
            long_id, added = engine.add(ids(LONG), max_new_tokens=LONG_NEW, eos_token_id=None), time.perf_counter()
            stamps[long_id] = []
        t0 = time.perf_counter()
        events = engine.step()
        now = time.perf_counter()
        steps.append(now - t0)
        for e in events:
            stamps[e.request_id].append(now)
        step += 1
    gaps = [max(b - a for a, b in zip(stamps[r], stamps[r][1:])) for r in short]
    first = stamps[short[0]]
    during = [b - a for a, b in zip(first, first[1:]) if added <= b <= stamps[long_id][0]]  # one short request's
    return {
        "prefill_chunk": chunk,
        "short_max_gap_s": max(gaps),
        "short_gaps_while_long_prefills_s": [round(x, 3) for x in during],
        "long_ttft_s": stamps[long_id][0] - added,
        "steps": len(steps),
        "wall_s": sum(steps),
    }


if __name__ == "__main__":
    torch.set_num_threads(2)
    spec, chunk = sys.argv[1], int(sys.argv[2])
    LONG = int(sys.argv[3]) if len(sys.argv) > 3 else LONG
    model = load_for_inference(spec, None, "cpu", "int8", True)
    run(model, None)  # warm-up (allocator, oneDNN primitives)
    for c in (None, chunk):
        print(json.dumps({"model": spec, **run(model, c)}), flush=True)
