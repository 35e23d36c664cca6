"""Modules imported at their first use (issue 21: import what a configuration does not use only when
it is used).

A :class:`LazyModule` stands where a module-level ``import x`` was: an idle node, or a configuration
that never reaches the code using ``x``, never pays for it (numpy about 14 MB of RSS, PyYAML about
1.5 MB). :data:`OPTIONAL_MODULES` lists the heavy ones the daemon does not need to run; ``status
--json`` reports which of them a running daemon has loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

#: Heavy modules a daemon loads only for the features that use them.
OPTIONAL_MODULES = (
    "numpy",
    "pyroute2",
    "yaml",
    "pydantic",
    "jsonschema",
    "rich",
    "prometheus_client",
    "miniupnpc",
    "wsproto",
)

#: What only the Python twin of the kernels (vpncloud.fastpath._python) imports: cryptography, with
#: its own OpenSSL (about 8 MiB resident). A daemon with the C kernels never loads it.
TWIN_MODULES = ("cryptography",)


class LazyModule:
    """Stands for module ``name`` and imports it when the first attribute is read.

    Each attribute is copied onto the proxy when first read, so later reads are plain instance
    lookups, not ``__getattr__`` calls (numpy's stand-in is read in per-batch code).
    """

    def __init__(self, name: str) -> None:
        self.__name = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self.__name), attr)
        setattr(self, attr, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self.__name}>"


def lazy(name: str) -> Any:
    """A :class:`LazyModule` for ``name``, or None when it is not installed."""
    return LazyModule(name) if importlib.util.find_spec(name) is not None else None


def loaded_optional(names: tuple[str, ...] = OPTIONAL_MODULES) -> list[str]:
    """The ``names`` (by default the :data:`OPTIONAL_MODULES`) this process has imported."""
    return [name for name in names if name in sys.modules]
