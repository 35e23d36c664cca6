"""The data plane with real kernels: TUN offloads, UDP GSO/GRO, super-packets, fallbacks (issue 9).

Two real daemons per test, each in its own namespace, in every combination of data-plane modes that
matters: ``super`` (T2), ``wire`` (T1; a node of ours with the capability switched off stands in for
the original VpnCloud, which ignores the capability) and ``off`` (no offloads, one packet per syscall).
Through the tunnel: TCP bulk transfers in both directions over IPv4 and IPv6 with a hash check, and
UDP datagrams of many sizes plus an application UDP GSO send (USO). The receiving kernels check every
checksum, so segmentation, checksum completion and coalescing errors show up as missing data. The
same runs over TAP devices in switch mode (Ethernet frames, device offloads without super-packets).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vpncloud import fastpath
from vpncloud.daemon.control import status_or_none
from vpncloud.lab.netns import Netns, Topology

sys.path.insert(0, str(Path(__file__).parent))
import dataplane_support as sup
from reach_support import wait_for

pytestmark = pytest.mark.netns

PY = sys.executable
SUPPORT = str(Path(__file__).parent / "dataplane_support.py")
PASSWORD = "dataplane-test"
TUN4 = {"a": "10.110.0.1", "b": "10.110.0.2", "c": "10.110.0.3"}
TUN6 = {"a": "fd98::1", "b": "fd98::2", "c": "fd98::3"}


def node_args(name: str, peer: str | None, device: str = "tun") -> list[str]:
    """The original's flags for node ``name`` (ours and the original take the same)."""
    args = ["--no-port-forwarding", "-v", "-p", PASSWORD,
            "--ip", f"{TUN4[name]}/24", "--claim", f"{TUN6[name]}/128",
            "--ifup", f"ip -6 addr add {TUN6[name]}/64 dev $IFNAME nodad"]  # fmt: skip
    if device == "tap":
        args += ["-t", "tap", "-m", "switch"]
    if peer:
        args += ["-c", f"{peer}:3210"]
    return args


def invalid_packets(status: dict[str, Any]) -> int:
    """Datagrams a node counted as invalid protocol since it started."""
    return int(status.get("invalid_protocol_total", {}).get("packets", 0))


class Daemon:
    def __init__(
        self,
        topo: Topology,
        ns: Netns,
        name: str,
        tmp: Path,
        mode: str,
        peer: str | None,
        device: str = "tun",
        pure_python: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.sock = str(tmp / f"{name}.sock")
        self.log = tmp / f"{name}.log"
        args = [PY, "-m", "vpncloud", "--control-socket", self.sock, *node_args(name, peer, device), *extra]
        env = {**os.environ, "VPNCLOUD_DATAPLANE": mode, "VPNCLOUD_PURE_PYTHON": "1" if pure_python else ""}
        with open(self.log, "ab") as out:
            self.proc = topo.spawn(ns, args, stdout=out, stderr=subprocess.STDOUT, env=env)

    def status(self) -> dict[str, Any] | None:
        return status_or_none(self.sock)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def tcp_transfer(src: Netns, dst: Netns, addr: str, tmp: Path, nbytes: int, seed: int) -> None:
    out = tmp / f"tcp-{seed}.json"
    server = dst.popen([PY, SUPPORT, "tcp-server", addr, "5001", str(out)])
    try:
        client = src.run([PY, SUPPORT, "tcp-client", addr, "5001", str(nbytes), str(seed)], timeout=90)
        assert client.returncode == 0
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    result = json.loads(out.read_text())
    assert result["bytes"] == nbytes
    assert result["sha256"] == hashlib.sha256(sup.tcp_data(nbytes, seed)).hexdigest()


def udp_transfer(src: Netns, dst: Netns, addr: str, tmp: Path, seed: int) -> None:
    out = tmp / f"udp-{seed}.json"
    server = dst.popen([PY, SUPPORT, "udp-server", addr, "5002", str(out), "2"], stdout=subprocess.PIPE)
    assert server.stdout is not None and server.stdout.readline() == b"ready\n"
    src.run([PY, SUPPORT, "udp-client", addr, "5002", str(seed)], timeout=30)
    server.wait(timeout=30)
    got = json.loads(out.read_text())
    payload = sup.gso_payload(seed)
    chunks = [payload[i : i + sup.GSO_SIZE] for i in range(0, len(payload), sup.GSO_SIZE)]
    want = {hashlib.sha256(d).hexdigest() for d in [*sup.udp_datagrams(seed), *chunks]}
    assert set(got) <= want  # nothing corrupt or unexpected arrived
    assert set(got) == want  # every datagram arrived at least once in three rounds


def transfers_both_ways(a_ns: Netns, b_ns: Netns, tmp: Path, nbytes: int, seed: int) -> None:
    """TCP a -> b and b -> a over IPv4 (``nbytes``) and IPv6 (half of it), then UDP each way."""
    tcp_transfer(a_ns, b_ns, TUN4["b"], tmp, nbytes, seed)
    tcp_transfer(b_ns, a_ns, TUN4["a"], tmp, nbytes, seed + 1)
    tcp_transfer(a_ns, b_ns, TUN6["b"], tmp, nbytes // 2, seed + 2)
    tcp_transfer(b_ns, a_ns, TUN6["a"], tmp, nbytes // 2, seed + 3)
    udp_transfer(a_ns, b_ns, TUN4["b"], tmp, seed + 4)
    udp_transfer(b_ns, a_ns, TUN6["a"], tmp, seed + 5)


PAIRS = [
    ("super", "super"),
    ("super", "wire"),
    ("wire", "wire"),
    ("super", "off"),
    ("off", "off"),
    ("socket", "socket"),
    ("super", "socket"),
]


@pytest.mark.parametrize(("mode_a", "mode_b"), PAIRS)
def test_transfers_through_the_tunnel(lan3: Any, tmp_path: Path, mode_a: str, mode_b: str) -> None:
    _transfers(lan3, tmp_path, mode_a, mode_b, "tun")


#: TAP (switch mode): device offloads in wire/super, never super-packets (those are for TUN).
TAP_PAIRS = [
    ("super", "super"),
    ("super", "off"),
    ("socket", "wire"),
]


@pytest.mark.parametrize(("mode_a", "mode_b"), TAP_PAIRS)
def test_tap_transfers_through_the_tunnel(lan3: Any, tmp_path: Path, mode_a: str, mode_b: str) -> None:
    _transfers(lan3, tmp_path, mode_a, mode_b, "tap")


@pytest.mark.parametrize("mode", ["wire", "super"])
def test_kernels_python_and_c_through_the_tunnel(lan3: Any, tmp_path: Path, mode: str) -> None:
    """Node a runs the Python twin of the kernels (VPNCLOUD_PURE_PYTHON=1), node b the C ones
    when they are built: every frame one side's kernels seal, the other side's open (issue 21)."""
    st_a, st_b = _transfers(lan3, tmp_path, mode, mode, "tun", pure_a=True)
    assert st_a["dataplane"]["kernels"] == "python"
    assert st_b["dataplane"]["kernels"] == fastpath.KERNELS


def _transfers(
    lan3: Any, tmp_path: Path, mode_a: str, mode_b: str, device: str, pure_a: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    a_ns, b_ns = lan3.nodes["a"], lan3.nodes["b"]
    a = Daemon(lan3.topo, a_ns, "a", tmp_path, mode_a, None, device, pure_python=pure_a)
    b = Daemon(lan3.topo, b_ns, "b", tmp_path, mode_b, lan3.v4["a"], device)
    wait_for(lambda: a_ns.ping(TUN4["b"], count=1, timeout=1.0), 30, what="ping over the tunnel")
    wait_for(lambda: a_ns.ping(TUN6["b"], count=1, timeout=1.0), 30, what="ping6 over the tunnel")
    st_a, st_b = a.status(), b.status()
    assert st_a is not None and st_b is not None
    both_super = mode_a == mode_b == "super" and device == "tun"
    assert bool(st_a["dataplane"]["super_peers"]) == both_super
    assert bool(st_b["dataplane"]["super_peers"]) == both_super
    for mode, st in ((mode_a, st_a), (mode_b, st_b)):
        plane = st["dataplane"]
        assert (plane["device_offloads"] != 0) == (mode in ("wire", "super"))
        # batched socket I/O in every mode but off, with or without device offloads
        assert plane["udp_gso"] == plane["udp_gro"] == (mode != "off")
    invalid_b = invalid_packets(st_b)

    transfers_both_ways(a_ns, b_ns, tmp_path, 12_000_000, 1)

    st_a, st_b = a.status(), b.status()
    assert st_a is not None and st_b is not None
    for mode, st in ((mode_a, st_a), (mode_b, st_b)):
        plane = st["dataplane"]
        # with device offloads the kernel handed over super-packets and took coalesced writes
        offloads = mode in ("wire", "super")
        assert (plane["device_gso_reads"] > 0) == offloads, plane
        assert (plane["device_gso_writes"] > 0) == offloads, plane
    if mode_b != "super" or device == "tap":
        # the stand-in for the original never got anything it does not understand
        assert invalid_packets(st_b) == invalid_b
    for d in (a, b):
        assert d.proc.poll() is None
        assert "Traceback" not in d.log_text()
        assert "Unexpected error" not in d.log_text()
    want = "python" if pure_a else fastpath.KERNELS
    assert f"Data-plane kernels: {want}" in a.log_text()
    return st_a, st_b


def test_t1_receiver_with_c_kernels_needs_no_numpy(lan3: Any, tmp_path: Path) -> None:
    """T1 (wire mode) with the C kernels on both sides: a TCP bulk transfer arrives intact through
    coalesced device writes, and neither side imported numpy for it (``status --json``): the
    segmentation (tcp_rows) and the merge of decrypted trains (coalesce_rows) run in C."""
    if fastpath.KERNELS != "c":
        pytest.skip("C kernels not built")
    a_ns, b_ns = lan3.nodes["a"], lan3.nodes["b"]
    a = Daemon(lan3.topo, a_ns, "a", tmp_path, "wire", None)
    b = Daemon(lan3.topo, b_ns, "b", tmp_path, "wire", lan3.v4["a"])
    wait_for(lambda: a_ns.ping(TUN4["b"], count=1, timeout=1.0), 30, what="ping over the tunnel")
    tcp_transfer(a_ns, b_ns, TUN4["b"], tmp_path, 12_000_000, 7)
    tcp_transfer(a_ns, b_ns, TUN6["b"], tmp_path, 6_000_000, 8)
    st_a, st_b = a.status(), b.status()
    assert st_a is not None and st_b is not None
    assert st_b["dataplane"]["device_gso_writes"] > 0, st_b["dataplane"]
    for st in (st_a, st_b):
        assert st["dataplane"]["kernels"] == "c"
        assert "numpy" not in st["memory"]["optional_modules"], st["memory"]
    for d in (a, b):
        assert d.proc.poll() is None
        assert "Traceback" not in d.log_text()
