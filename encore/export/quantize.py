"""int8 / int4 for exported graphs, with onnxruntime's quantization tools.

- "int8": dynamic quantization of the weights' MatMul / Gemm (MatMulInteger with activations quantized
  per call): what CPUs run fastest, no calibration.
- "qdq-int8": static quantization in QDQ form (QuantizeLinear / DequantizeLinear around each weight and
  activation, ranges from calibration inputs): the form NPU execution providers (QNN, OpenVINO NPU)
  compile into integer kernels. The calibration inputs are what the torch model itself feeds each
  graph on the calibration prompts.
- "int4": what `encore.optimize(quantize="int4")` runs, as onnxruntime's `MatMulNBits` (4-bit weights
  in asymmetric blocks of 32 with fp scales and zero points, llama.cpp's Q4_1 levels; accuracy level 4:
  int8 activations, its fastest CPU path) for the decoding layers, and the same policy: the encoder's
  graph and the output head stay dynamic int8.

Only products with a constant weight are quantized (`MatMulConstBOnly`): attention's q @ k and
weights @ v stay in float.

`quantize_onnx(source, directory, "int8" | "int4")` quantizes an existing fp32 export (no torch
export again: the graphs `export_onnx(quantize=...)` writes, from the same fp32 graphs).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from encore.onnx.manifest import MANIFEST, Manifest

CALIBRATION_STEPS = 4  # decode steps recorded per calibration prompt
DYNAMIC = ("int8", "int4")  # what an existing export can be quantized to without its torch model


def quantize_onnx(source: str | Path, directory: str | Path, quantize: str) -> Manifest:
    """The fp32 export in `source` quantized ("int8" or "int4", as `export_onnx(quantize=...)`) into
    `directory`, beside a copy of its tokenizer files and an updated manifest. qdq-int8 calibrates on
    the torch model's own inputs: export it from the model."""
    source, directory = Path(source), Path(directory)
    manifest = Manifest.read(source)
    if quantize not in DYNAMIC:
        raise ValueError(
            f"an existing export quantizes to 'int8' or 'int4', not {quantize!r} "
            "(qdq-int8 calibrates on the model: encore export --model MODEL --quantize qdq-int8 --calibration ...)"
        )
    if manifest.quantization:
        raise ValueError(f"{source / MANIFEST}: already quantized ({manifest.quantization}); start from an fp32 export")
    if directory.resolve() == source.resolve():
        raise ValueError(f"{directory}: the quantized export needs a directory of its own, not its source's")
    directory.mkdir(parents=True, exist_ok=True)
    graphs = copy.deepcopy(manifest.graphs)
    graph_files = [f for g in graphs.values() for f in source.glob(g["file"] + "*")]  # each graph + its data
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for f in graph_files:
            shutil.copy2(f, Path(tmp) / f.name)
        quantize_graphs(Path(tmp), graphs, quantize, manifest.model["vocab_size"])
        for f in Path(tmp).iterdir():
            shutil.move(str(f), directory / f.name)
    for f in source.iterdir():  # the tokenizer's files
        if f.is_file() and f.name != MANIFEST and f not in graph_files:
            shutil.copy2(f, directory / f.name)
    quantized = dataclasses.replace(manifest, quantization=quantize, graphs=graphs)
    (directory / MANIFEST).write_text(quantized.to_json())
    return quantized


def quantize_graphs(
    directory: Path,
    graphs: dict[str, dict],
    mode: str,
    vocab_size: int,
    feeds: dict[str, list[dict[str, np.ndarray]]] | None = None,
) -> None:
    """Quantize every graph file of `graphs` in `directory`, in place (their manifest entries name the
    new files). `vocab_size` finds the output head (int4 keeps it int8); `feeds`: qdq-int8's
    calibration inputs per graph (`calibration_feeds`)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    options = {"MatMulConstBOnly": True}
    for name, graph in graphs.items():
        source = directory / graph["file"]
        target = source.with_name(source.stem + f".{'int4' if mode == 'int4' else 'int8'}.onnx")
        large = (directory / (graph["file"] + ".data")).exists()
        common = dict(op_types_to_quantize=["MatMul", "Gemm"], per_channel=True, use_external_data_format=large)
        if mode == "int4" and name != "encoder":  # decoding's layers int4, then the rest (the head) int8
            int4 = source.with_name(source.stem + ".q4.onnx")
            _matmul_nbits(source, int4, vocab_size, large)
            quantize_dynamic(int4, target, weight_type=QuantType.QInt8, extra_options=options, **common)
            for f in directory.glob(int4.name + "*"):
                f.unlink()
        elif mode in ("int8", "int4"):
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, extra_options=options, **common)
        else:
            quantize_static(
                source,
                target,
                _Reader((feeds or {})[name]),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                extra_options=options,
                **common,
            )
        for f in directory.glob(graph["file"] + "*"):
            f.unlink()
        graph["file"] = target.name


INT4_BLOCK = 32  # inputs per MatMulNBits block: llama.cpp's Q4_1 groups, as encore.optimize's default


def _matmul_nbits(source: Path, target: Path, vocab_size: int, large: bool) -> None:
    """Every MatMul with a constant weight -> MatMulNBits (4 bits, asymmetric blocks of INT4_BLOCK,
    accuracy level 4), except the output head (the weight with `vocab_size` outputs: int8, as the
    PyTorch policy keeps it)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    graph = onnx.load(str(source))
    shapes = {t.name: list(t.dims) for t in graph.graph.initializer}
    head = [n.name for n in graph.graph.node if n.op_type == "MatMul" and vocab_size in shapes.get(n.input[1], [])]
    quantizer = MatMulNBitsQuantizer(
        graph, block_size=INT4_BLOCK, is_symmetric=False, accuracy_level=4, nodes_to_exclude=head
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=large)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


@torch.inference_mode()
def calibration_feeds(
    model: nn.Module, prompts: list[list[int]], static: dict[str, int] | None = None
) -> dict[str, list[dict[str, np.ndarray]]]:
    """For each graph, the inputs the torch model feeds it on each prompt (one at a time, padded to a
    static export's fixed lengths): the prompt for the encoder / prefill, then the first
    CALIBRATION_STEPS decode steps for the step."""
    config = model.config
    encdec = config.arch == "encdec"
    first = "encoder" if encdec else "prefill"
    feeds: dict[str, list[dict]] = {first: [], "decoder_step": []}
    for prompt in prompts:
        width = static["max_input_len"] if static else len(prompt)
        new = static["max_new_tokens"] if static else CALIBRATION_STEPS + 1
        ids = torch.full((1, width), config.pad_token_id, dtype=torch.long)
        ids[0, : len(prompt)] = torch.tensor(prompt[:width])
        mask = (torch.arange(width) < len(prompt)).long()[None]
        second = {"attention_mask": mask} if encdec else {"lengths": mask.sum(1)}
        feeds[first].append(_numpy({"input_ids": ids, **second}))
        logits, cache = model.prefill(ids, mask, new)
        for _ in range(min(CALIBRATION_STEPS, new - 1)):
            tokens = logits.argmax(-1)
            step = {"tokens": tokens, "positions": cache.length.clone()}
            layers = {"past_k": cache.k, "past_v": cache.v}
            if encdec:
                layers.update(cross_k=cache.cross_k, cross_v=cache.cross_v)
            for name, tensor in layers.items():
                step.update({f"{name}.{i}": t for i, t in enumerate(tensor)})
            if encdec:
                step["cross_mask"] = mask
            feeds["decoder_step"].append(_numpy(step))  # copies: the step below writes the cache
            logits = model.decode_step(tokens, cache)
    return feeds


def _numpy(feed: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in feed.items()}
