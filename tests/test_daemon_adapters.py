"""The daemon's I/O adapters on their own: device, UDP socket, control socket, hooks, stats/beacon I/O."""

from __future__ import annotations

import json
import os
import selectors
import socket
import stat
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from vpncloud.core.beacon import markers
from vpncloud.daemon import device as devmod
from vpncloud.daemon.control import ControlServer, find_socket, request, status_or_none
from vpncloud.daemon.hooks import Hooks, run_sync
from vpncloud.daemon.loop import normalize_peer
from vpncloud.daemon.stats_io import create_stats_file, load_beacon, store_beacon
from vpncloud.lab.netns import Netns, Topology

ROOT = Path(__file__).resolve().parent.parent


def py_in_ns(ns: Netns, code: str, timeout: float = 30.0) -> str:
    """Run a Python snippet inside ``ns`` and return its stdout (fails the test on error)."""
    r = ns.run([sys.executable, "-c", textwrap.dedent(code)], check=False, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


# --- device ---------------------------------------------------------------------------------------


@pytest.mark.netns
def test_tun_open_configure_and_read_kernel_packet(topology: Topology) -> None:
    ns = topology.namespace("dev")
    out = py_in_ns(
        ns,
        """
        import os, select, subprocess, json
        from vpncloud.daemon.device import Device
        d = Device.open("tun", "vctest%d")
        d.set_mtu(1400)
        d.set_ip("10.77.0.1", 24)
        ping = subprocess.Popen(["ping", "-c", "3", "-i", "0.2", "10.77.0.2"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pkt = None
        for _ in range(50):
            select.select([d.fileno()], [], [], 0.2)
            p = d.read()
            if p and p[0] >> 4 == 4 and p[9] == 1:
                pkt = p
                break
        ping.kill()
        print(json.dumps({"name": d.ifname, "mtu": d.get_mtu(), "ip": d.get_ipv4(),
                          "pkt": pkt.hex() if pkt else None}))
        d.close()
        print(json.dumps({"exists": os.path.exists("/sys/class/net/" + d.ifname)}))
        """,
    )
    first, second = (json.loads(line) for line in out.strip().splitlines())
    assert first["name"].startswith("vctest")
    assert first["mtu"] == 1400 and first["ip"] == "10.77.0.1"
    pkt = bytes.fromhex(first["pkt"])
    assert pkt[12:16] == bytes([10, 77, 0, 1]) and pkt[16:20] == bytes([10, 77, 0, 2])  # no PI header
    assert second["exists"] is False  # non-persistent: closing removes the interface


@pytest.mark.netns
def test_tap_mtu_follows_default_route(topology: Topology) -> None:
    ns = topology.node("m", "10.78.0.1/24")
    ns.ip("link", "set", "eth0", "mtu", "1400")
    out = py_in_ns(
        ns,
        """
        from vpncloud.daemon.device import Device, setup_mtu, default_interface
        d = Device.open("tap", "vctap%d")
        setup_mtu(d)
        print(default_interface(), d.get_mtu())
        """,
    )
    assert out.split() == ["eth0", str(1400 - 87)]


@pytest.mark.netns
def test_mtu_without_default_route_follows_the_routed_interface(topology: Topology) -> None:
    """Issue 24: the original keeps 1500 without a default route and TCP crawls; we take the MTU of
    the interface that carries the routes, and say so at WARNING level."""
    ns = topology.node("r", "10.79.0.1/24", default_route=False)
    ns.ip("link", "set", "eth0", "mtu", "1400")
    code = """
        import logging, sys
        logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
        from vpncloud.daemon.device import Device, setup_mtu, default_interface
        d = Device.open("tun", "vctun%d")
        setup_mtu(d)
        print("RESULT", default_interface(), d.get_mtu())
        """
    out = py_in_ns(ns, code)
    assert "RESULT None " + str(1400 - 73) in out
    assert "WARNING No default route: taking the MTU of eth0 (1400)" in out
    # nothing routed at all: the MTU stays, with a warning that says what it costs
    bare = topology.namespace("bare")
    out = py_in_ns(bare, code)
    assert "RESULT None 1500" in out
    assert "WARNING No default route and no routed interface found: keeping MTU 1500" in out


def test_route_interfaces_parsing(tmp_path: Path) -> None:
    v4 = tmp_path / "route"
    v6 = tmp_path / "ipv6_route"
    v4.write_text(
        "Iface\tDestination\tGateway\tFlags\nlo\t0000007F\t00000000\t0001\neth1\t0000A8C0\t00000000\t0001\n"
    )
    v6.write_text("fd00 40 00 00 00 00 00 00 00 eth2\nfe80 40 00 00 00 00 00 00 00 eth1\n")
    assert devmod.route_interfaces(str(v4), str(v6)) == ["eth1", "eth2"]
    assert devmod.route_interfaces(str(tmp_path / "none"), str(tmp_path / "none")) == []


def test_default_interface_parsing(tmp_path: Path) -> None:
    table = tmp_path / "route"
    header = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
    table.write_text(header + "eth1\t0000A8C0\t00000000\t0001\n" + "eth2\t00000000\t0100A8C0\t0003\n")
    assert devmod.default_interface(str(table)) == "eth2"
    table.write_text(header + "eth1\t0000A8C0\t0100A8C0\t0003\n" + "eth3\t0000A9C0\t0200A8C0\t0003\n")
    assert devmod.default_interface(str(table)) == "eth3"
    table.write_text(header)
    assert devmod.default_interface(str(table)) is None
    assert devmod.default_interface(str(tmp_path / "missing")) is None


def test_device_open_errors_are_clean() -> None:
    with pytest.raises(devmod.DeviceError, match="Failed to open virtual tun interface"):
        devmod.Device.open("tun", "x%d", "/nonexistent/tun")
    with pytest.raises(devmod.DeviceError, match="name too long"):
        devmod.Device.open("tun", "a" * 20)


# --- UDP socket -----------------------------------------------------------------------------------


@pytest.mark.netns
def test_udp_dual_stack_and_ipv4_fallback(topology: Topology) -> None:
    ns = topology.namespace("udp")
    ns.link_up("lo")
    out = py_in_ns(
        ns,
        """
        import json, socket, select
        from vpncloud.daemon.udp import UdpSocket
        res = {}
        for force in (False, True):
            s = UdpSocket(("::", 0), force_ipv4=force)
            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            peer.bind(("127.0.0.1", 0))
            peer.sendto(b"hello", ("127.0.0.1", s.port))
            select.select([s.fileno()], [], [], 2)
            got = s.recv_batch()
            # the core talks mapped addresses; the socket converts for the IPv4 fallback
            ok = s.send(b"back", ("::ffff:127.0.0.1", peer.getsockname()[1]))
            reply = peer.recvfrom(100)[0]
            v6 = s.send(b"x", ("::1", 9))
            res[str(force)] = {"ipv6": s.ipv6, "got": [[d.decode(), a[0]] for d, a in got],
                               "sent": ok, "reply": reply.decode(), "v6_send": v6}
        print(json.dumps(res))
        """,
    )
    res = json.loads(out)
    assert res["False"]["ipv6"] is True and res["True"]["ipv6"] is False
    for r in res.values():
        assert r["got"] == [["hello", "::ffff:127.0.0.1"]]
        assert r["sent"] is True and r["reply"] == "back"
    assert res["True"]["v6_send"] is False  # no IPv6 destination through an IPv4 socket, and no crash


def test_normalize_peer() -> None:
    assert normalize_peer("node") == "node:3210"
    assert normalize_peer("node:1") == "node:1"
    assert normalize_peer("[fd00::1]:5") == "[fd00::1]:5"
    assert normalize_peer("[fd00::1]") == "[fd00::1]:3210"
    assert normalize_peer("fd00::1") == "[fd00::1]:3210"


# --- control socket -------------------------------------------------------------------------------


def _serve_once(server: ControlServer, client: socket.socket, payload: bytes) -> bytes:
    client.sendall(payload)
    client.shutdown(socket.SHUT_WR)
    _serve(server)
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    return data


def _serve(server: ControlServer) -> None:
    """Accept one client and answer it (what the daemon's loop does), for at most 5 s."""
    sel = selectors.DefaultSelector()
    sel.register(server.fileno(), selectors.EVENT_READ)
    conn = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sel.select(0.1)
        if conn is None:
            conn = server.on_accept()
            continue
        if server.on_client(conn):
            break
    sel.close()


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        (b'{"cmd": "status"}\n', {"ok": True}),
        (b"not json\n", {"ok": False}),
        (b"\xff\xfe\n", {"ok": False}),
        (b"[1, 2]\n", {"ok": False}),
        (b'{"cmd": 5}\n', {"ok": False}),
        (b'{"cmd": "reboot"}\n', {"ok": False}),
        (b"x" * 10000, {"ok": False}),
        (b"", {"ok": False}),
    ],
)
def test_control_server_answers_everything(tmp_path: Path, payload: bytes, expect: dict[str, bool]) -> None:
    def handler(req: dict[str, object]) -> dict[str, object]:
        if req["cmd"] == "status":
            return {"ok": True, "status": {"peers": []}}
        return {"ok": False, "error": "unknown"}

    path = str(tmp_path / "ctl" / "x.sock")
    server = ControlServer(path, handler)
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0  # only root may ask
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    reply = json.loads(_serve_once(server, client, payload))
    assert reply["ok"] is expect["ok"]
    if not reply["ok"]:
        assert isinstance(reply["error"], str) and reply["error"]
    client.close()
    server.close()
    assert not os.path.exists(path)


def test_control_client_errors(tmp_path: Path) -> None:
    from vpncloud.daemon.control import ControlError

    with pytest.raises(ControlError, match="no control socket"):
        request(str(tmp_path / "missing.sock"))
    assert find_socket(str(tmp_path / "a.sock"), None) == str(tmp_path / "a.sock")
    assert find_socket(None, "vpncloud3") == "/run/vpncloud/vpncloud3.sock"


@pytest.mark.parametrize(
    ("answer", "expect"),
    [
        ({"ok": True, "status": {"peers": []}}, {"peers": []}),
        ({"ok": False, "error": "busy"}, None),
        ({"ok": True, "status": "not a status"}, None),
    ],
)
def test_status_or_none_for_pollers(tmp_path: Path, answer: dict[str, object], expect: object) -> None:
    assert status_or_none(str(tmp_path / "missing.sock")) is None  # not up yet
    path = str(tmp_path / "x.sock")
    server = ControlServer(path, lambda _request: answer)
    thread = threading.Thread(target=_serve, args=(server,))
    thread.start()
    try:
        assert status_or_none(path) == expect
    finally:
        thread.join(10)
        server.close()


# --- hooks, stats file, beacons ------------------------------------------------------------------


def test_hooks_select_and_env(tmp_path: Path) -> None:
    out = tmp_path / "env"
    hooks = Hooks(
        "echo global-$EVENT >> " + str(out), {"peer_connected": f'echo "$EVENT $PEER $NODE_ID" >> {out}'}
    )
    t1 = hooks.fire("peer_connected", {"IFNAME": "vpn0", "PEER": "1.2.3.4:3210", "NODE_ID": "ab"})
    assert t1 is not None
    t1.join(5)
    t2 = hooks.fire("vpn_started", {"IFNAME": "vpn0"})
    assert t2 is not None
    t2.join(5)
    assert out.read_text().splitlines() == ["peer_connected 1.2.3.4:3210 ab", "global-vpn_started"]
    assert Hooks(None, {}).fire("vpn_started", {}) is None
    assert run_sync("exit 3", {"IFNAME": "x"}, "ifup") == 3
    assert run_sync('test "$IFNAME" = vpn7', {"IFNAME": "vpn7"}, "ifup") == 0


def test_stats_file_created_0644(tmp_path: Path) -> None:
    path = tmp_path / "stats"
    path.write_text("old")
    os.chmod(path, 0o600)
    create_stats_file(str(path))
    assert path.read_text() == "" and stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_beacon_file_and_commands(tmp_path: Path) -> None:
    begin, end = markers("pw")
    beacon = begin + "DATA" + end
    path = tmp_path / "beacon"
    store_beacon(str(path), beacon, "pw")
    assert path.read_text() == beacon + "\n" and stat.S_IMODE(os.stat(path).st_mode) == 0o444
    store_beacon(str(path), beacon, "pw")  # replaces the read-only file
    envfile = tmp_path / "env"
    thread = store_beacon(f'|echo "$begin|$data|$end|$beacon" > {envfile}', beacon, "pw")
    assert thread is not None
    thread.join(5)
    assert envfile.read_text().strip() == f"{begin}|DATA|{end}|{beacon}"
    got: list[str] = []
    assert load_beacon(str(path), "pw", got.append) is None
    assert got == [beacon + "\n"]
    thread = load_beacon('|echo "$begin-$end"', "pw", got.append)
    assert thread is not None
    thread.join(5)
    assert got[-1].strip() == f"{begin}-{end}"
    got.clear()
    load_beacon(str(tmp_path / "missing"), "pw", got.append)  # logged, not raised
    assert got == []


_HEAP_CHURN = """
import resource, sys
from vpncloud.daemon import heap
if sys.argv[1] == "keep":
    assert heap.keep_freed_memory()
for _ in range(3):
    bufs = [bytearray(65536) for _ in range(8)]
    del bufs
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):  # what one wake-up of a super-packet receiver does to the heap, many times
    bufs = [bytearray(65536) for _ in range(8)]
    del bufs
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_heap_memory_is_kept_instead_of_faulted_in_again() -> None:
    import subprocess

    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _HEAP_CHURN, mode],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            cwd=Path(__file__).resolve().parent.parent,
        )
        return int(out.stdout)

    # glibc's default trims the top of the heap after every round, so each round faults it back in
    assert faults("default") >= 200
    assert faults("keep") < 20


@pytest.mark.parametrize(
    ("release", "expected"),
    [("6.18.44-fc-v1272", True), ("5.7.0", True), ("5.6.19-generic", False), ("4.19.0", False), ("x", False)],
)
def test_peer_sockets_need_linux_5_7(monkeypatch: pytest.MonkeyPatch, release: str, expected: bool) -> None:
    from vpncloud.daemon import loop

    real = os.uname()
    fake = os.uname_result((real.sysname, real.nodename, release, real.version, real.machine))
    monkeypatch.setattr(loop.os, "uname", lambda: fake)
    assert loop._kernel_at_least(5, 7) is expected
