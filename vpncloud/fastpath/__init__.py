"""The data plane's fast path (issue 21): buffer kernels in C with a Python twin, one interface.

``_kernels`` (C, built at install time against libcrypto when a compiler and OpenSSL's headers are
there) and ``_python`` offer the same functions; this module picks one at import, the C one unless
it is not built or ``VPNCLOUD_PURE_PYTHON=1`` asks for the Python one. Callers use ``Aead``,
``open_train``, ``tcp_rows``, ``coalesce_rows``, ``Ed25519``, ``ed25519_verify``, ``X25519``,
``KernelError`` and ``KERNELS`` (``"c"`` or ``"python"``) from here only.

The Python twin is imported only when it runs: it imports cryptography, whose own OpenSSL costs
about 8 MiB of resident memory that a daemon with the C kernels does not need.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Any

from vpncloud.lazy import lazy

__all__ = [
    "KERNELS",
    "KERNELS_REASON",
    "TCP_ROWS",
    "X25519",
    "Aead",
    "Ed25519",
    "KernelError",
    "coalesce_rows",
    "ed25519_verify",
    "implementation",
    "lazy_numpy",
    "open_train",
    "tcp_rows",
]


def _load() -> tuple[ModuleType, str]:
    if os.environ.get("VPNCLOUD_PURE_PYTHON", "").strip() not in ("", "0"):
        return implementation("python"), "VPNCLOUD_PURE_PYTHON is set"
    import importlib.util

    if importlib.util.find_spec(f"{__name__}._kernels") is None:
        why = "C kernels not built (no compiler or no OpenSSL headers at install time)"
        return implementation("python"), why
    try:
        from . import _kernels  # type: ignore[attr-defined]
    except ImportError as exc:  # built, but for another Python or without its libcrypto
        return implementation("python"), f"C kernels do not load ({exc})"
    return _kernels, "C kernels built"


def implementation(name: str) -> ModuleType:
    """The kernels by name, ``"c"`` or ``"python"`` (tests run both); ImportError if not built."""
    if name == "python":
        from . import _python

        return _python
    if name == "c":
        from . import _kernels  # type: ignore[attr-defined]

        return _kernels  # type: ignore[no-any-return]
    raise ValueError(f"no kernels named {name!r}")


_impl, KERNELS_REASON = _load()
#: Which kernels run: "c" or "python" (the log at startup and ``status --json`` say it).
KERNELS = "python" if _impl.__name__.endswith("._python") else "c"
if TYPE_CHECKING:
    # both twins have one interface: the Python one's signatures are the types
    from ._python import (
        X25519,
        Aead,
        Ed25519,
        KernelError,
        coalesce_rows,
        ed25519_verify,
        open_train,
        tcp_rows,
    )
else:
    Aead = _impl.Aead
    KernelError = _impl.KernelError
    open_train = _impl.open_train
    tcp_rows = _impl.tcp_rows
    Ed25519 = _impl.Ed25519
    ed25519_verify = _impl.ed25519_verify
    X25519 = _impl.X25519
    coalesce_rows = _impl.coalesce_rows


# numpy costs about 14 MB of RSS; an idle node, or one whose batches never have enough
# equal-sized packets for a vectorised check, never imports it
_NUMPY = lazy("numpy")


def lazy_numpy() -> Any:
    """numpy (imported at its first use) or None when it is not installed."""
    return _NUMPY


#: Whether ``tcp_rows`` can run: always in C, with numpy in Python (else segment by segment).
TCP_ROWS = KERNELS == "c" or _NUMPY is not None
