"""`encore bench --vision PRESET --image-keep 1.0 0.33`: what image tokens cost each architecture.

For the encoder-decoder VLM and the decoder-only VLM (both random weights, both through
`encore.optimize`), at each `image_keep`: first-token latency (tower + projector + prefill + first
step), decode time per token, and the K/V memory one request holds. The tower and projector run the
same for both, so they are timed once on their own and reported beside the totals.

The encoder-decoder reads the k image tokens once in its encoder and keeps them only as cross-attention
K/V of its (fewer) decoder layers; the decoder-only model keeps them in every layer's self-attention
cache and attends over them at every step. Repetitions are interleaved between the models and the
median is reported, so the two see the same machine.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from encore.convert import resolve_model
from encore.model.cache import GenerationCache
from encore.model.io import build, spec_label
from encore.model.vlm import IMAGE_TOKEN_ID, VisionLanguageModel
from encore.vision.config import VisionConfig


@dataclass
class VisionBenchConfig:
    model: str = "encdec-330m"
    baseline: str = "deconly-330m"
    vision: str = "clip-vit-l-336"
    image_keeps: tuple[float, ...] = (1.0, 0.33)
    selection: str = "variance"
    question_len: int = 32  # text tokens of the question, besides the image's
    output_len: int = 32
    repeats: int = 5
    device: str = "cpu"
    seed: int = 0
    json_path: str | None = "bench_vision.json"
    rows: list[dict[str, Any]] = field(default_factory=list)


def _vlm(spec: str, vision: VisionConfig, selection: str, device: str, seed: int) -> VisionLanguageModel:
    from encore.infer.optimize import optimize

    config, checkpoint = resolve_model(spec)
    if checkpoint is not None:
        raise ValueError(f"--model {spec}: bench --vision builds models from presets or config .json (random weights)")
    torch.manual_seed(seed)
    vlm = VisionLanguageModel(config, vision, 1.0, selection, IMAGE_TOKEN_ID, lm=build(config, seed=seed))
    return optimize(vlm, device=device)


def _timed(fn: Any, device: str) -> float:
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _point(vlm: VisionLanguageModel, pixels: torch.Tensor, config: VisionBenchConfig) -> dict[str, float]:
    ids = torch.tensor([vlm.image_prompt(list(range(400, 400 + config.question_len)))])
    run = lambda n: vlm.generate(ids, pixel_values=pixels, max_new_tokens=n, eos_token_id=None)
    first = _timed(lambda: run(1), config.device)
    total = _timed(lambda: run(config.output_len), config.device)
    with torch.inference_mode():
        tower = _timed(lambda: vlm.image_tokens(pixels), config.device)
    return {
        "first_token_s": first,
        "decode_s_per_token": (total - first) / max(1, config.output_len - 1),
        "tower_s": tower,
    }


def run_vision_bench(config: VisionBenchConfig) -> dict[str, Any]:
    vision = VisionConfig.resolve(config.vision)
    for keep in config.image_keeps:
        if not 0 < keep <= 1:
            raise ValueError(f"--image-keep {keep}: must be in (0, 1]")
    specs = [s for s in (config.model, config.baseline) if s and s != "none"]
    models = {spec_label(s): _vlm(s, vision, config.selection, config.device, config.seed) for s in specs}
    pixels = torch.randn(1, 3, vision.image_size, vision.image_size, device=config.device)
    rows = []
    for keep in config.image_keeps:
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in models}
        for vlm in models.values():
            vlm.vision.image_keep = keep
            _point(vlm, pixels, config)  # warm-up
        for _ in range(config.repeats):
            for name, vlm in models.items():  # interleaved: both models see the same minutes of the machine
                vlm.vision.image_keep = keep
                samples[name].append(_point(vlm, pixels, config))
        for name, vlm in models.items():
            input_len = config.question_len + vlm.n_image_tokens + (1 if vlm.arch == "encdec" else 2)
            median = {k: statistics.median(s[k] for s in samples[name]) for k in samples[name][0]}
            kv = GenerationCache.bytes_for(vlm.config, input_len, config.output_len)
            rows.append(
                {
                    "model": name,
                    "arch": vlm.arch,
                    "image_keep": keep,
                    "image_tokens": vlm.n_image_tokens,
                    "input_len": input_len,
                    "kv_bytes": kv,
                    **median,
                }
            )
    config.rows = rows
    doc = {"config": {k: v for k, v in asdict(config).items() if k != "rows"}, "rows": rows}
    if config.json_path:
        Path(config.json_path).write_text(json.dumps(doc, indent=2) + "\n")
    print(format_table(rows))
    return doc


def format_table(rows: list[dict[str, Any]]) -> str:
    names = ("keep", "img tok", "first token ms", "tower ms", "decode ms/tok", "K/V MiB")
    head = f"{'model':<16} " + " ".join(f"{n:>{max(5, len(n))}}" for n in names)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<16} {r['image_keep']:>5.2f} {r['image_tokens']:>7} {1e3 * r['first_token_s']:>14.1f} "
            f"{1e3 * r['tower_s']:>8.1f} {1e3 * r['decode_s_per_token']:>13.2f} {r['kv_bytes'] / 2**20:>7.2f}"
        )
    return "\n".join(lines)
