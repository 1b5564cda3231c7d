"""Package attributes imported on first use (PEP 562), so that ``import fastdpt`` and the command
line's start do not pay for torch, timm or Lightning until a command needs them."""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, names: dict[str, str]):
    """A module ``__getattr__`` for ``package``: ``names`` maps an attribute to its submodule."""

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(names[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
