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


def require(module: str, extra: str) -> Any:
    """Import `module`, which the capability `extra` installs; a one-line error naming the extra when
    it is missing (a ValueError, so the CLI prints it without a traceback)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise ValueError(
            f"this needs {top}, which encore's {extra!r} extra installs: pip install 'encore[{extra}]'"
        ) from None
