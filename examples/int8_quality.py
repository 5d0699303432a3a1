"""What int8 costs in quality on a trained model: greedy tokens and task metric, fp32 vs int8.

    python examples/int8_quality.py runs/stdlib_code2doc/encdec-code2doc/final --task code2doc
    python examples/int8_quality.py runs/stdlib_code2doc/encdec-code2doc/final --backend onnx

Generates greedily for the validation split with the fp32 model (encore's engine) and with its int8
version (`--backend torch`: `encore.optimize(quantize="int8")`; `--backend onnx`: `encore export
--quantize int8` run by onnxruntime), and prints the token agreement (share of generated positions
where int8 emits fp32's token; share of outputs identical end to end) and each one's metric.
"""

from __future__ import annotations

import argparse
import json
import tempfile

from encore.cli.common import load_for_inference
from encore.data import load_task
from encore.eval.metrics import compute_metrics
from encore.infer.pipeline import GenerationOptions, encode_sources, generate_ids


def int8_outputs(args, encoded: list[list[int]], options: GenerationOptions) -> list[list[int]]:
    """The int8 model's new tokens (EOS left out) for every encoded input."""
    if args.backend == "torch":
        return generate_ids(load_for_inference(args.model, None, "cpu", "int8"), encoded, options)
    import numpy as np

    from encore.cli.common import build_model
    from encore.export import export_onnx
    from encore.onnx import OnnxGenerator

    directory = tempfile.mkdtemp(prefix="encore-int8-")
    export_onnx(build_model(args.model), directory, quantize="int8")
    gen = OnnxGenerator(directory)
    out = []
    for ids in encoded:  # one at a time: no padding in either run
        row = gen.generate(np.array([ids]), max_new_tokens=args.max_new_tokens)[0].tolist()
        out.append(row[: row.index(gen.eos)] if gen.eos in row else row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--task", default="code2doc")
    p.add_argument("--split", default="validation")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-source-len", type=int, default=384)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="where the int8 model runs")
    args = p.parse_args()
    examples = list(load_task(args.task, split=args.split, limit=args.limit))
    options = GenerationOptions(
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, max_source_len=args.max_source_len
    )
    outputs, scores = {}, {}
    model = load_for_inference(args.model, None, "cpu")
    encoded, _ = encode_sources(model, [e["source"] for e in examples], args.max_source_len)
    outputs[None] = generate_ids(model, encoded, options)
    outputs["int8"] = int8_outputs(args, encoded, options)
    for quantize in (None, "int8"):
        texts = [model.tokenizer.decode(t, skip_special_tokens=True).strip() for t in outputs[quantize]]
        scores[quantize] = compute_metrics(args.task, texts, [e["target"] for e in examples])
    fp32, int8 = outputs[None], outputs["int8"]
    positions = sum(max(len(a), len(b)) for a, b in zip(fp32, int8))
    same = sum(x == y for a, b in zip(fp32, int8) for x, y in zip(a, b))
    report = {
        "examples": len(examples),
        "token_agreement": same / max(positions, 1),
        "identical_outputs": sum(a == b for a, b in zip(fp32, int8)) / len(examples),
        "fp32": scores[None],
        "int8": scores["int8"],
        "delta": {k: scores["int8"][k] - scores[None][k] for k in scores[None]},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
