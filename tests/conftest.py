"""Shared pytest fixtures.

Tests marked ``@pytest.mark.netns`` need root, /dev/net/tun and iproute2; they are skipped (with the
reason) where any of these is missing. The ``topology`` fixture gives each test its own
:class:`vpncloud.lab.netns.Topology` with a unique namespace prefix and ALWAYS tears it down (also when
the test fails or is interrupted); ``lan3`` is a ready-made switch with three plugged-in nodes.
The ``secret_scan`` plugin (tests/secret_scan.py) is on for every run.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import pytest

from vpncloud import fastpath
from vpncloud.lab.netns import Netns, Topology, requirements_missing

# Every run greps all captured output and output files for the secrets the suite uses (issue 10):
# a hit fails the session (VPNCLOUD_SECRET_SCAN=report only lists the hits).
pytest_plugins = ["secret_scan"]


def pytest_configure(config: pytest.Config) -> None:
    # A job started with `cmd &` by a non-interactive shell (a CI runner's, nohup's) inherits SIGINT
    # ignored, Python keeps it so, and every child inherits it: the tests that interrupt `lab up` or a
    # topology with SIGINT would wait forever. A handled signal is reset to the default on exec.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``netns``-marked tests when this machine cannot run them."""
    missing = requirements_missing()
    if not missing:
        return
    skip = pytest.mark.skip(reason="netns test needs: " + ", ".join(missing))
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def topology() -> Iterator[Topology]:
    """An empty topology with a fresh prefix; torn down after the test, pass or fail."""
    missing = requirements_missing()
    if missing:
        pytest.skip("netns fixture needs: " + ", ".join(missing))
    topo = Topology()
    with topo:
        yield topo


@dataclass
class Lan:
    """A switch namespace with nodes on one underlay LAN (``eth0`` in each node)."""

    topo: Topology
    switch: Netns
    nodes: dict[str, Netns]
    v4: dict[str, str]  # node -> underlay IPv4 (no prefix length)
    v6: dict[str, str]  # node -> underlay IPv6 (no prefix length)


@pytest.fixture
def lan3(topology: Topology) -> Lan:
    """Nodes ``a``, ``b``, ``c`` on one bridge: 10.201.0.1-3/24 and fd20:1::1-3/64, default routes set."""
    sw = topology.switch()
    nodes, v4, v6 = {}, {}, {}
    for i, name in enumerate("abc", start=1):
        v4[name] = f"10.201.0.{i}"
        v6[name] = f"fd20:1::{i}"
        nodes[name] = topology.node(name, f"{v4[name]}/24", f"{v6[name]}/64")
    return Lan(topology, sw, nodes, v4, v6)


NO_C = "C kernels not built (no compiler or no OpenSSL headers at install time)"


def c_kernels() -> ModuleType | None:
    """The C kernels (vpncloud/fastpath/_kernels.c), None when they are not built."""
    try:
        return fastpath.implementation("c")
    except ImportError:
        return None


@pytest.fixture(params=["c", "python"])
def kernels(request: pytest.FixtureRequest) -> ModuleType:
    """The data-plane kernels: each test once with the C ones and once with the Python twin."""
    if request.param == "c" and c_kernels() is None:
        pytest.skip(NO_C)
    return fastpath.implementation(request.param)


#: What core.primitives takes from the kernels (the handshake's keys and the single-packet AEAD).
PRIMITIVE_KERNELS = ("Aead", "Ed25519", "X25519", "ed25519_verify")


@pytest.fixture(params=["c", "python"])
def crypto_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """core.primitives on each kernels in turn: the C ones (OpenSSL's libcrypto), then the Python
    twin (cryptography), whichever the process picked at import."""
    if request.param == "c" and c_kernels() is None:
        pytest.skip(NO_C)
    impl = fastpath.implementation(request.param)
    for name in PRIMITIVE_KERNELS:
        monkeypatch.setattr(fastpath, name, getattr(impl, name))
    return impl
