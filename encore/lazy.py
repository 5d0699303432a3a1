"""Package namespaces whose names are imported on first use (PEP 562), so importing a package costs
only what the caller touches (`import encore.onnx` never imports torch)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any], where: dict[str, str]) -> tuple[Callable, Callable]:
    """`__getattr__` and `__dir__` for `package` exporting each name of `where` from its module."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        namespace[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
