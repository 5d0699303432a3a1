"""`encore.optimize(model, ...)`: a model made ready for inference by explicit, visible module swaps.

    model = encore.optimize(model)                    # CPU fp32: oneDNN projections (x86-64)
    model = encore.optimize(model, quantize="int8")   # CPU: int8 weights, dynamic int8 activations
    model = encore.optimize(model, quantize="int4")   # CPU: int4 weights where decoding reads them
    model = encore.optimize(model, device="cuda")     # GPU: bf16 weights; SDPA's fused kernels
    encore.deoptimize(model)                          # the plain Linear modules back, as they were

Every projection (`layers.Linear`) is swapped for the kernel module that runs it
(`encore.model.kernels`), and so is the output head, tied to the embedding or not; `print(model)` shows
each. The swaps are recorded on the model, so `deoptimize` restores the very modules (and weights)
the model had. Nothing global changes: two models in one process can run different kernels.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from encore.model.base import runnable_dtype
from encore.model.fused import bf16_attention_available, fused_available
from encore.model.fused_layer import fuse
from encore.model.fused_rows import fuse_int8_rows
from encore.model.int4 import (
    CHUNK,
    DEFAULT_GROUP_SIZE,
    Int4Linear,
    int4_available,
    int4_divides,
    valid_group_size,
)
from encore.model.kernels import (
    DEFAULT_SYMMETRIC,
    Int8Embedding,
    Int8Linear,
    OneDNNLinear,
    int8_available,
    onednn_available,
    rows_only_available,
)
from encore.model.layers import Linear, weight_std
from encore.model.probes import bf16_prefill_by_default, bf16_products_by_default
from encore.model.vlm import VisionLanguageModel

QUANTIZE = (None, "int8", "int4")
CPU_LINEAR = ("auto", "onednn", "aten")
KINDS = ("int4", "int8", "none")  # what a policy may give a module
PREFILL_ATTENTION = ("auto", "fp32", "bf16")
PREFILL_PRODUCTS = ("auto", "bf16", "int8")
# quantize="int4" unless a policy says otherwise: the encoder (prefill only: int8's fbgemm GEMM is 2-4x the
# int4 kernel at 512 rows) and the output head (4 bits there cost SmolLM2 4% of perplexity; llama.cpp
# keeps its output at 6 bits) stay int8; decoding's layers go int4 (docs/engine.md)
DEFAULT_INT4_POLICY = {"encoder.*": "int8", "lm_head": "int8"}


def optimize(
    model: Any,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
    linear: str = "auto",
    group_size: int = DEFAULT_GROUP_SIZE,
    policy: dict[str, str] | None = None,
    fused: bool = True,
    symmetric: bool = DEFAULT_SYMMETRIC,
    kv_dtype: torch.dtype | str | None = "auto",
    prefill_attention: str = "auto",
    keep_originals: bool = True,
    prefill_products: str = "auto",
) -> Any:
    """Move `model` to `device` / `dtype` (default: its device; fp32 on CPU, bf16 on CUDA), put it in
    eval mode without gradients, and swap its projections for the fastest inference kernels there:

    - CPU, `quantize=None`: fp32 through oneDNN where it was measured faster (x86-64; `linear="aten"`
      keeps F.linear, i.e. torch's BLAS);
    - CPU, `quantize="int8"`: `Int8Linear` (fbgemm VNNI): int8 per-channel weights, activations
      quantized per call; the output head too, and the token tables (`Int8Embedding`: int8 rows, a
      scale each; a lookup scales its rows back);
    - CPU, `quantize="int4"`: `Int4Linear`: int4 weights in groups of `group_size` inputs (32, or a
      multiple of 64), each with an fp16 scale and, unless `symmetric`, an fp16 minimum (the defaults:
      llama.cpp's Q4_1, which reproduces a Q4_1 GGUF's weights exactly; `symmetric=True` is Q4_0's
      levels); int8 activations per call, row and group; by `DEFAULT_INT4_POLICY` the encoder and the
      output head stay int8; a projection whose inputs do not divide into groups of `group_size` takes
      groups of 64, or int8 where 64 does not divide;
    - `policy`: {module-name pattern: "int4" | "int8" | "none"} (fnmatch, first match wins, over
      `DEFAULT_INT4_POLICY`), e.g. {"lm_head": "int8"} or {"decoder.*.mlp.*": "int4", "*": "int8"};
      the token tables ("embed", "encoder_embed") are int8 rows unless it says "none" for them;
    - CUDA: bf16 weights, F.linear (cuBLAS); int8 is a CPU path and is refused here;
    - CPU fp32, `fused=True` (and a C compiler): RMSNorms and the decode step's one-query attention
      through encore's fused C kernels (`encore.model.fused`), a decoder layer's decode step per C call
      (fp32, int8 or int4 projections);
    - `kv_dtype`: the K/V caches' precision; "auto": fp16 where the fused CPU kernels run (half the
      memory and bytes a step reads, llama.cpp's default), else the model's; None / float32 keep it;
    - `prefill_attention`: how attention over many queries (a prefill, an encoder) runs on the CPU:
      "fp32" (SDPA), "bf16" (csrc/attend.c: bf16 products accumulated in fp32, fp32 softmax; ~4x SDPA
      on a T5Gemma 2 encoder layer; needs the fused kernels and a CPU with AVX512-BF16), or "auto":
      bf16 for a quantized model where it runs (its int8 activations are coarser than bf16's
      rounding), fp32 otherwise;
    - `prefill_products`: how an int8 projection runs many rows (a prefill, an encoder) on the CPU:
      "bf16" (the int8 weight as bf16 times bf16 activations; nearer the float product), "int8" (each
      row's activations rounded to int8, as a decode step and CTranslate2's int8 do; the quality cost
      in docs/engine.md), or "auto": bf16 on AMX, elsewhere where the CPU has AVX512-BF16 and they are
      not much slower than int8 rows (`encore.model.probes.bf16_products_by_default`), else int8;
    - `keep_originals=False` (the CLI's, the server's, the bench's): quantized modules' fp32 originals
      are not kept for `deoptimize` (which then leaves them quantized) but freed: `encdec-330m` int8
      holds 0.8 GiB instead of 1.9.
    - A model built with `encore.model.io.build(config, deferred=True)` (random weights, projections
      left on the meta device): each projection's weight is made just before its kernel takes it, so
      a quantized model never holds all of them in fp32 (CPU, float32; no originals kept).

    Returns the model (changed in place). Calling it again first undoes the previous swaps."""
    _check_arguments(quantize, policy, linear, kv_dtype, prefill_attention, prefill_products)
    if isinstance(model, VisionLanguageModel):  # the text model gets the kernels; the tower follows its device/dtype
        settings = (quantize, linear, group_size, policy, fused, symmetric, kv_dtype, prefill_attention)
        optimize(model.lm, device, dtype, *settings, keep_originals=keep_originals, prefill_products=prefill_products)
        weight = model.lm.embed.weight
        model.vision.to(device=weight.device, dtype=weight.dtype).eval().requires_grad_(False)
        return model
    deoptimize(model)
    device = torch.device(device) if device is not None else model.embed.weight.device
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = runnable_dtype(model.config, dtype)
    if quantize:
        _check_quantize(quantize, device, dtype, group_size)
    fused = fused and device.type == "cpu" and dtype == torch.float32 and fused_available()
    kv_dtype = (torch.float16 if fused else None) if kv_dtype == "auto" else kv_dtype
    bf16_prefill = _bf16_prefill(prefill_attention, quantize, fused, kv_dtype, model.config.encoder_input)
    deferred = any(p.is_meta for p in model.parameters())  # `build(deferred=True)`: projections made below
    if deferred and (device.type != "cpu" or dtype != torch.float32):
        raise ValueError("a model built with deferred projections is made on the CPU in float32")
    keep_originals = keep_originals and not deferred  # (an original would be a weightless meta module)
    (model if deferred else model.to(device=device, dtype=dtype)).eval().requires_grad_(False)
    plain = _kernel(device, dtype, linear)
    bf16_rows = _bf16_rows(prefill_products, quantize, device)  # an int8 projection's many rows as bf16
    # each int8 weight once, as csrc/int8.c's rows, from the start (fbgemm's copy where int8 rows need it)
    rows_only = fused and rows_only_available()
    swaps = _swap_projections(model, quantize, plain, policy, group_size, symmetric, keep_originals, rows_only)
    swaps += _quantize_embeddings(model, keep_originals, policy) if quantize else []  # (after the tied head)
    for module in (m for m in model.modules() if isinstance(m, Int8Linear)):
        module.bf16_many_rows = bf16_rows
    if fused:
        swaps += fuse(model, bf16_prefill)
        swaps += fuse_int8_rows(model)  # decode steps' int8 projections the whole-layer C call does not run
    model._encore_kv_dtype = kv_dtype
    model._encore_swaps = swaps
    model._encore_optimized = {
        "device": str(device), "dtype": str(dtype), "quantize": quantize, "linear": linear, "fused": fused,
        "kv_dtype": str(kv_dtype or dtype), "prefill_attention": "bf16" if bf16_prefill else "fp32",
        "prefill_products": prefill_products,
    }  # fmt: skip
    if quantize == "int4":
        model._encore_optimized |= {"group_size": group_size, "symmetric": symmetric, "policy": dict(policy or {})}
    return model


def _swap_projections(
    model: Any,
    quantize: str | None,
    plain: type | None,
    policy: dict | None,
    group_size: int,
    symmetric: bool,
    keep_originals: bool,
    rows_only: bool = False,
) -> list[tuple[nn.Module, str, nn.Module | None]]:
    """Every `Linear` (and a tied head) for its kernel: int4 / int8 by `quantize` and the policy (int4's
    default policy after the caller's), else the fp32 kernel `plain`; a deferred projection's weight made
    just before (`_made`). `rows_only`: each int8 projection is made as csrc/int8.c's rows alone, never
    packed for fbgemm (a 10B decoder-only model peaked at 2 bytes a weight when the packed copies were
    released only at the end; packing and unpacking cost seconds a GB besides). The swaps
    to undo (originals only where kept or where the kernel holds them)."""
    n_layers = model.config.n_encoder_layers + model.config.n_decoder_layers
    rules = [*(policy or {}).items(), *(DEFAULT_INT4_POLICY.items() if quantize == "int4" else ())]
    swaps: list[tuple[nn.Module, str, nn.Module | None]] = []
    targets = [(p, n, c) for p in model.modules() for n, c in p.named_children() if type(c) is Linear]
    names = {id(m): name for name, m in model.named_modules()}
    if model.lm_head is None:  # the tied head: the embedding's weight, as a projection
        targets.append((model, "lm_head", None))
    for parent, name, child in targets:
        qualified = f"{names[id(parent)]}.{name}".lstrip(".")
        weight, bias = (model.embed.weight, None) if child is None else (child.weight, child.bias)
        if weight.is_meta:  # made now, quantized next: one fp32 weight at a time
            weight, bias = _made(child, qualified, n_layers)
        kind = _policy_kind(qualified, rules, quantize or "none")
        if kind == "int4":
            group = next((g for g in (group_size, CHUNK) if int4_divides(weight.shape[1], g)), None)
            kind = "int8" if group is None else kind  # inputs that do not divide into groups of 64: int8
        if kind == "int4":
            setattr(parent, name, Int4Linear(weight, bias, group, symmetric))
        elif kind == "int8":
            setattr(parent, name, Int8Linear(weight, bias, rows_only=rows_only))
        elif plain is not None:
            setattr(parent, name, plain(weight, bias))
        else:
            if child is not None and child.weight is not weight:  # a made weight no kernel takes: the module's
                child.weight, child.bias = weight, bias
            continue
        if keep_originals or kind == "none" or child is None:  # fp32 kernels hold the very weight
            swaps.append((parent, name, child))
    return swaps


def _policy_kind(name: str, rules: Any, default: str) -> str:
    """The kind the first (pattern, kind) of `rules` whose pattern matches `name` gives it, else `default`."""
    return next((kind for pattern, kind in rules if fnmatchcase(name, pattern)), default)


def kv_dtype_named(name: str) -> torch.dtype | str | None:
    """`--kv-cache-dtype`'s name ("auto", "fp32", "fp16") as `optimize`'s `kv_dtype`."""
    return {"auto": "auto", "fp32": None, "fp16": torch.float16}[name]


def _quantize_embeddings(
    model: Any, keep_originals: bool, policy: dict | None
) -> list[tuple[nn.Module, str, nn.Module]]:
    """A quantized model's token tables as int8 rows (`Int8Embedding`): the embedding and an encoder's
    own, unless `policy` says "none" for its name ("embed", "encoder_embed"). The swaps to undo (where
    the originals are kept)."""
    swaps = []
    # not a table the output head still reads (tied, and no kernel took it: linear="aten" and an "lm_head"
    # policy of "none")
    names = ("embed", "encoder_embed") if model.lm_head is not None else ("encoder_embed",)
    for name in names:
        table = getattr(model, name, None)
        plain = _policy_kind(name, (policy or {}).items(), "int8") == "none"
        if isinstance(table, nn.Embedding) and not table.weight.is_meta and not plain:
            setattr(model, name, Int8Embedding.quantize(table))
            if keep_originals:
                swaps.append((model, name, table))
    return swaps


@torch.no_grad()
def _made(linear: nn.Module, name: str, n_layers: int) -> tuple[nn.Parameter, nn.Parameter | None]:
    """A deferred projection's weight and bias: fresh values as `init_weights` gives them, on the CPU."""
    weight = nn.Parameter(torch.empty(linear.weight.shape).normal_(0.0, weight_std(f"{name}.weight", n_layers)))
    bias = None if linear.bias is None else nn.Parameter(torch.zeros(linear.bias.shape))
    return weight.requires_grad_(False), None if bias is None else bias.requires_grad_(False)


def _check_arguments(
    quantize: str | None,
    policy: dict | None,
    linear: str,
    kv_dtype: torch.dtype | str | None,
    prefill_attention: str,
    prefill_products: str,
) -> None:
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    if policy and not quantize:
        raise ValueError("a quantization policy needs quantize='int8' or 'int4'")
    bad = {k: v for k, v in (policy or {}).items() if v not in KINDS}
    if bad:
        raise ValueError(f"policy: each value must be one of {KINDS}, got {bad}")
    if linear not in CPU_LINEAR:
        raise ValueError(f"linear must be one of {CPU_LINEAR}, got {linear!r}")
    if not (kv_dtype == "auto" or kv_dtype in (None, torch.float32, torch.float16)):
        raise ValueError(f"kv_dtype must be 'auto', None, torch.float32 or torch.float16, got {kv_dtype!r}")
    if prefill_attention not in PREFILL_ATTENTION:
        raise ValueError(f"prefill_attention must be one of {PREFILL_ATTENTION}, got {prefill_attention!r}")
    if prefill_products not in PREFILL_PRODUCTS:
        raise ValueError(f"prefill_products must be one of {PREFILL_PRODUCTS}, got {prefill_products!r}")


def _bf16_rows(prefill_products: str, quantize: str | None, device: torch.device) -> bool:
    """`prefill_products`' choice for the int8 projections' many rows: bf16 products or int8 rows
    ("auto": `bf16_products_by_default`, measured where the CPU has no AMX)."""
    if prefill_products != "auto" or not quantize or device.type != "cpu":
        return prefill_products != "int8"
    return bf16_products_by_default()


def _bf16_prefill(
    prefill_attention: str, quantize: str | None, fused: bool, kv_dtype: torch.dtype | None, encoder_input: str
) -> bool:
    """Whether the fused attention runs a prefill with bf16 products (`prefill_attention`, checked here
    against what this machine and these settings allow)."""
    if kv_dtype == torch.float16 and not fused:
        raise ValueError(
            "kv_dtype=torch.float16 is the fused CPU kernels' (they read and write half-precision K/V): it needs "
            "device cpu, dtype float32, fused=True and a C compiler"
        )
    if prefill_attention == "bf16" and not (fused and bf16_attention_available()):
        raise ValueError(
            "prefill_attention='bf16' is a fused CPU kernel: it needs device cpu, dtype float32, fused=True, a C "
            "compiler and a CPU with AVX512-BF16 (this one: "
            f"{'has it' if bf16_attention_available() else 'has not'})"
        )
    if prefill_attention == "auto":
        return bf16_prefill_by_default(quantize is not None, fused, encoder_input)
    return prefill_attention == "bf16"


def _check_quantize(quantize: str, device: torch.device, dtype: torch.dtype, group_size: int) -> None:
    if device.type != "cpu" or dtype != torch.float32:
        raise ValueError(
            f"quantize={quantize!r} is a CPU path (fp32 activations, {quantize} weights); got device {device}, "
            f"dtype {dtype}. On a GPU use dtype=torch.bfloat16"
        )
    if not int8_available():  # int4's policy falls back to int8 where groups do not divide
        raise ValueError(f"quantize={quantize!r} needs a torch with the x86 / fbgemm quantized engine (x86-64 builds)")
    if quantize == "int4":
        if not valid_group_size(group_size):
            raise ValueError(f"group_size must be 32 or a positive multiple of {CHUNK}, got {group_size}")
        if not int4_available():
            raise ValueError("quantize='int4' needs a C compiler (cc / gcc, or $CC) on Linux to build its kernel")


def _kernel(device: torch.device, dtype: torch.dtype, linear: str):
    """The fp32 / bf16 projection kernel (None: keep F.linear)."""
    if device.type == "cpu" and dtype == torch.float32 and linear != "aten" and onednn_available():
        return OneDNNLinear
    if linear == "onednn" and device.type == "cpu":
        raise ValueError("linear='onednn' needs an x86-64 CPU and a torch built with oneDNN (mkldnn)")
    return None


def deoptimize(model: Any) -> Any:
    """Undo `optimize`'s module swaps (the original modules and weights come back); device and dtype
    stay. Returns the model."""
    if isinstance(model, VisionLanguageModel):
        deoptimize(model.lm)
        return model
    for parent, name, original in reversed(getattr(model, "_encore_swaps", [])):
        setattr(parent, name, original)
    model._encore_swaps = []
    model._encore_optimized = None
    model._encore_kv_dtype = None
    return model


def optimized(model: Any) -> dict[str, Any] | None:
    """How `optimize` last set the model up (device, dtype, quantize, linear), or None."""
    return getattr(model, "_encore_optimized", None)
