"""`FusedInt8Linear`: an `Int8Linear` whose few-row calls (a decode step's projections and output head)
run csrc/int8.c (VNNI, or AVX2), each row quantized symmetric to int8 as the fused decoder layer does,
instead of fbgemm's one-row dynamic linear (~100 us a call on BART-base's 768 x 3072). On a CPU with
AMX, a decode step of any number of rows (one position a sequence: [B, D] or [B, 1, D]) runs there too,
through the matrix unit's tiles (the output head at 64 rows: 3-4x oneDNN's bf16 product). Many
positions (a prefill) keep the module's path (fbgemm's per-row-scaled products, or bf16 GEMMs: nearer
the float product). It serves the output head and the projections of layers that the whole-layer C
call does not run (`encore.model.fused_layer`); it shares the original's packed weight and adds
csrc/int8.c's copy (`Int8Linear.rows`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from encore.model import layer_c, native
from encore.model.fused_layer import projection_runs_in_c
from encore.model.kernels import BF16Tiles, Int8Linear, int8_rows_linear

MAX_ROWS = 8  # more rows than this: fbgemm (its GEMM wins once there are rows to share the weight's reads)


class FusedInt8Linear(native.Handles, Int8Linear):
    @classmethod
    def of(cls, linear: Int8Linear) -> FusedInt8Linear:
        """The same projection (its packed weight and bias shared, not copied) with the few-row C path."""
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused._packed, fused._bias, fused.reduce_range = linear._packed, linear._bias, linear.reduce_range
        fused.out_features, fused.in_features = linear.out_features, linear.in_features
        fused.bf16_many_rows = linear.bf16_many_rows
        for name, tensor in zip(("row_weight", "row_scales", "row_sums"), linear.rows()):
            fused.register_buffer(name, tensor, persistent=False)
        fused._bind()
        return fused

    def _bind(self) -> None:
        self._amx = bool(layer_c.library().encore_int8_has_amx())

    def forward(self, x: Tensor | BF16Tiles, act: int = -1, tiles: bool = False) -> Tensor | BF16Tiles:
        if isinstance(x, BF16Tiles) or act >= 0 or tiles:  # a prefill's AMX path (`Int8Linear.on_tiles`)
            return super().forward(x, act, tiles)
        rows = x.numel() // self.in_features
        decoding = self._amx and (x.dim() == 2 or x.shape[-2] == 1)  # one position a sequence, any rows
        if (
            (rows > MAX_ROWS and not decoding)
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or torch.is_grad_enabled()
        ):
            return super().forward(x)
        y = int8_rows_linear(x.reshape(rows, self.in_features), *self.rows(), self._bias)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        many = ", a decode step's any rows: c-int8-amx" if self._amx else ""
        return f"{super().extra_repr()}, up to {MAX_ROWS} rows: c-int8{many}"


def fuse_int8_rows(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Swap each `Int8Linear` outside the encoder that csrc/int8.c runs (`projection_runs_in_c`) for a
    `FusedInt8Linear`; the swaps made, as `fuse` returns them."""
    swaps = []
    if layer_c.library() is None:
        return swaps
    for where, parent in list(model.named_modules()):
        if where.startswith("encoder"):  # an encoder reads many rows at once: fbgemm's path is its own
            continue
        for name, child in list(parent.named_children()):
            if type(child) is Int8Linear and projection_runs_in_c(child):
                setattr(parent, name, FusedInt8Linear.of(child))
                swaps.append((parent, name, child))
    return swaps
