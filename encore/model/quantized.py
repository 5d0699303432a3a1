"""Quantized checkpoints: an int8 / int4 model saved as its packed weights and loaded without re-quantizing.

`model.save_pretrained(dir)` on a model `encore.optimize(..., quantize=...)` made writes, beside
config.json, `quantization.json`:

    {"format": "encore-quantized", "version": 1,
     "modules": {"decoder.0.attn.qkv": {"kind": "int4", "group_size": 128, "symmetric": true},
                 "lm_head": {"kind": "int8"}, ...}}

and model.safetensors holds each quantized module's tensors under its name: `NAME.qweight` (int4: uint8
[N, K/2], two weights a byte; int8: int8 [N, K]), `NAME.scales` (int4: fp16 [N, K/group]; int8: fp32 [N]),
`NAME.mins` (asymmetric int4: fp16 [N, K/group]) and `NAME.bias` where it has one (an entry without
"symmetric" reads as symmetric: checkpoints written before asymmetric int4 existed). Everything else
(embeddings, norms) is stored as in a plain checkpoint. `encore.load(dir)` builds the kernels from those
tensors directly: the model is ready to run, no rounding again, and an fp32 copy of the quantized
weights never exists (so `deoptimize` has nothing to restore: such a model stays quantized).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from encore.model.fused import fused_available
from encore.model.fused_layer import fuse
from encore.model.int4 import Int4Linear
from encore.model.kernels import Int8Embedding, Int8Linear, rows_only_available
from encore.model.probes import bf16_prefill_by_default, bf16_products_by_default

QUANTIZATION_FILE = "quantization.json"
FORMAT, VERSION = "encore-quantized", 1
EMBEDDING = "int8-embedding"  # a token table's kind: `Int8Embedding`'s rows and scales


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's int8 / int4 kernel modules by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Int8Linear | Int4Linear | Int8Embedding)}


def quantized_state(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(the tensors to save, quantization.json's content) of an optimized, quantized model."""
    modules = quantized_modules(model)
    state: dict[str, Tensor] = {}
    for name, value in model.state_dict().items():
        owner = name.rpartition(".")[0]
        if owner in modules or (name == "lm_head.weight" and model.lm_head is not None and _tied(model)):
            continue  # a kernel's own tensors are written below; a tied head's weight is the embedding's
        state[name] = value
    manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "modules": {}}
    for name, module in modules.items():
        qweight, scales, bias = module.quantized()
        state[f"{name}.qweight"], state[f"{name}.scales"] = qweight, scales
        if bias is not None:
            state[f"{name}.bias"] = bias
        entry: dict[str, Any] = {"kind": "int8"}
        if isinstance(module, Int8Embedding):  # a token table: int8 rows (+ its own end-of-image vector)
            entry = {"kind": EMBEDDING}
            if module.eoi_id is not None:
                state[f"{name}.eoi_embedding"] = module.eoi_embedding
        if isinstance(module, Int4Linear):
            entry = {"kind": "int4", "group_size": module.group_size, "symmetric": module.symmetric}
            if not module.symmetric:
                state[f"{name}.mins"] = module.mins
        manifest["modules"][name] = entry
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}, manifest


def _tied(model: nn.Module) -> bool:
    return bool(getattr(model.config, "tie_embeddings", False))


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """quantization.json of a checkpoint, checked; None for a plain checkpoint."""
    path = directory / QUANTIZATION_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{path}: format must be {FORMAT!r} version {VERSION}")
    for name, entry in manifest.get("modules", {}).items():
        if entry.get("kind") not in ("int8", "int4", EMBEDDING):
            raise ValueError(
                f"{path}: module {name}: kind must be 'int8', 'int4' or {EMBEDDING!r}, got {entry.get('kind')!r}"
            )
    return manifest


def strip_quantized(model: nn.Module, manifest: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Before the model's storage is made (meta-built): drop the plain projections the checkpoint has
    quantized, so no fp32 copy of them is ever allocated; the kernels take their places in
    `install_quantized`. Returns each one's [out, in] as the config implies it."""
    shapes = {}
    for name in manifest["modules"]:
        parent, _, child = name.rpartition(".")
        try:
            holder = model.get_submodule(parent) if parent else model
        except AttributeError:
            holder = None
        current = getattr(holder, child, None)
        if name == "lm_head" and current is None:  # the tied head: the embedding's shape
            shapes[name] = tuple(model.embed.weight.shape)
            continue
        if not isinstance(getattr(current, "weight", None), Tensor) or current.weight.dim() != 2:
            raise ValueError(f"{QUANTIZATION_FILE}: module {name} is not a projection of a model of this config")
        shapes[name] = tuple(current.weight.shape)
        if manifest["modules"][name]["kind"] == EMBEDDING:  # stays (meta, never filled) until its rows replace it
            if not isinstance(current, nn.Embedding):
                raise ValueError(f"{QUANTIZATION_FILE}: module {name} is not a token table of a model of this config")
            continue
        setattr(holder, child, nn.Identity())
    return shapes


def install_quantized(
    model: nn.Module,
    manifest: dict[str, Any],
    state: dict[str, Tensor],
    shapes: dict[str, tuple[int, int]],
    where: Path,
) -> None:
    """Build each quantized module's kernel from the checkpoint's tensors (popped from `state`): an int8
    projection as csrc/int8.c's rows alone where `fuse_loaded` will run on them (never packed for fbgemm)."""
    rows_only = fused_available() and rows_only_available()
    for name, entry in manifest["modules"].items():
        try:
            qweight, scales = state.pop(f"{name}.qweight"), state.pop(f"{name}.scales")
        except KeyError as e:
            raise ValueError(f"{where}: quantized module {name} has no tensor {e.args[0]}") from None
        bias = state.pop(f"{name}.bias", None)
        symmetric = entry.get("symmetric", True)  # absent: int8, or int4 from before asymmetric groups
        mins = None if symmetric else state.pop(f"{name}.mins", None)
        if not symmetric and mins is None:
            raise ValueError(f"{where}: asymmetric int4 module {name} has no tensor {name}.mins")
        got = (qweight.shape[0], qweight.shape[1] * (2 if entry["kind"] == "int4" else 1))
        if got != shapes[name]:
            raise ValueError(
                f"{where}: {name}.qweight holds a {list(got)} projection, the config implies {list(shapes[name])}"
            )
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        if entry["kind"] == EMBEDDING:
            module: nn.Module = Int8Embedding(
                qweight, scales, getattr(holder, child), state.pop(f"{name}.eoi_embedding", None)
            )
        elif entry["kind"] == "int4":
            module = Int4Linear.from_quantized(qweight, scales, bias, mins)
        else:
            try:
                module = Int8Linear.from_quantized(qweight, scales, bias, rows_only=rows_only)
            except ValueError as e:  # a scales / bias tensor of another shape
                raise ValueError(f"{where}: quantized module {name}: {e}") from None
        setattr(holder, child, module)
    kinds = "+".join(sorted({e["kind"] for e in manifest["modules"].values()} - {EMBEDDING}))
    model._encore_swaps = []  # nothing to restore: the fp32 weights are not in the checkpoint
    model._encore_optimized = {"device": "cpu", "dtype": "torch.float32", "quantize": kinds, "linear": "auto"}


def fuse_loaded(model: nn.Module) -> None:
    """After a quantized checkpoint's weights are in: its norms and attention through the fused
    kernels too, as `encore.optimize` would have left them (and `deoptimize` can undo)."""
    fused = fused_available()
    bf16_prefill = bf16_prefill_by_default(True, fused, model.config.encoder_input)  # prefill_attention="auto"
    int8 = [m for m in model.modules() if isinstance(m, Int8Linear)]
    bf16_rows = bool(int8) and bf16_products_by_default()  # prefill_products="auto"
    for module in int8:
        module.bf16_many_rows = bf16_rows
    if fused:
        model._encore_swaps = fuse(model, bf16_prefill)
    model._encore_optimized["fused"] = fused
    model._encore_optimized["prefill_attention"] = "bf16" if bf16_prefill else "fp32"


def json_text(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"
