"""The fp32 ONNX graphs of encdec-330m give the torch engine's greedy tokens exactly (by hand, once):

    python examples/onnx_parity.py        # ~1 minute to export, then 32 steps both ways, left- and right-padded

Random weights scaled x4 so that greedy decoding varies instead of repeating one token.
"""

import tempfile
import time

import numpy as np
import torch

from encore import ModelConfig
from encore.export import export_onnx
from encore.model.io import build
from encore.onnx import OnnxGenerator

OUT = tempfile.mkdtemp(prefix="encore-onnx-parity-")
config = ModelConfig.preset("encdec-330m")
model = build(config, seed=0).eval()
with torch.no_grad():
    for p in model.parameters():
        if p.dim() == 2:
            p.mul_(4)  # wider weights: varied greedy rollouts, not one repeated token
t = time.time()
export_onnx(model, OUT)
print("export s", round(time.time() - t))
gen = OnnxGenerator(OUT, threads=2)
g = torch.Generator().manual_seed(0)
rows = [torch.randint(3, 32000, (n,), generator=g) for n in (40, 23)]
for side in ("left", "right"):
    ids = torch.zeros(2, 40, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(40 - len(r), 40)
        ids[i, sl] = r
        mask[i, sl] = 1
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=32, eos_token_id=None).numpy()
    got = gen.generate(ids.numpy(), mask.numpy(), max_new_tokens=32, eos_token_id=None)
    print(
        "encdec-330m fp32",
        side,
        "equal over 32 steps:",
        np.array_equal(ref, got),
        "distinct tokens:",
        len(set(ref.flatten())),
        "mismatches",
        (ref != got).sum(),
    )
