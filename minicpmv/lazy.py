"""Package attributes imported on first use: a package's __init__ lists which submodule holds
each name, so importing the package (or a torch-free part of it) pulls in nothing heavy."""

from __future__ import annotations

import importlib


def lazy_getattr(package: str, names: dict[str, str], namespace: dict):
    """A module `__getattr__` for `package`: `names` maps an attribute to its submodule; the value
    is imported on first use and kept in `namespace` (the package's globals())."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{names[name]}", package), name)
        namespace[name] = value
        return value

    return __getattr__
