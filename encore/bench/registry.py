"""The bench's backends by name: a `BackendSpec.kind` -> the class that builds and times it.
Adding a backend: its class (`encore.bench.backends` / `anchors`), a line here, a flag in
`encore.cli.bench` that adds its spec (`_specs` in `encore.bench.runner`)."""

from __future__ import annotations

from encore.bench.anchors import CT2Backend, HFBackend
from encore.bench.backends import Backend, BackendSpec, EncoreBackend, OnnxBackend
from encore.bench.llamacpp import LlamaCppBackend

BACKENDS: dict[str, type] = {
    "encore": EncoreBackend,
    "onnx": OnnxBackend,
    "hf": HFBackend,
    "ct2": CT2Backend,
    "llamacpp": LlamaCppBackend,
}


def make_backend(spec: BackendSpec) -> Backend:
    """Cheap: resolves the config; the weights are built only by `Backend.build`."""
    if spec.kind not in BACKENDS:
        raise ValueError(f"unknown bench backend {spec.kind!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[spec.kind](spec)
