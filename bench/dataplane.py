#!/usr/bin/env python3
"""Data-plane benchmark: our daemon per mode next to raw veth and the VPNs available on this machine.

Run as root from the repository::

    .venv/bin/python bench/dataplane.py                     # 3 passes, all modes/peers found
    .venv/bin/python bench/dataplane.py --passes 5 --duration 10 --write docs/performance.md
    VPNCLOUD_ORIGINAL=/path/to/vpncloud .venv/bin/python bench/dataplane.py

Setup per pass and subject: two fresh network namespaces joined by a veth pair (10.210.0.1/.2, MTU
1500, a default route each that points only at the other side), the tunnel between them
(10.211.0.1/.2), then

* ping RTT through the tunnel, median of the per-packet times, at two rates: 50/s (``-i 0.02``,
  the processes go idle between pings, so this includes waking them up on this machine) and
  1000/s (``-i 0.001``, the same path kept busy),
* iperf3 TCP, 1 stream and 4 streams (``-P 4``), ``--duration`` seconds each, client in A, server in B,
* CPU seconds of the VPN processes of both sides during each iperf3 run (``/proc/PID/stat``),
* resident size (``VmRSS``) of one VPN process when idle and after moving traffic (``VmHWM``).

Subjects: ``raw`` (the veth itself), ``t2`` (our daemon, offloads + negotiated super-packets),
``t1`` (offloads, wire-compatible only), ``sock`` (no device offloads, as a TAP device: one packet
per device read/write, UDP GSO/GRO on the socket), ``off`` (no kernel offloads: one packet per syscall),
``original`` (``$VPNCLOUD_ORIGINAL``), ``mixed`` (ours sending to the original: T1 on the wire),
``floor`` (``bench/floor.py``: the least Python a T2 tunnel can run, no handshake or routing; a
reference for how far T2 is from it),
``wireguard`` (kernel module, else wireguard-go), ``openvpn`` (static key, AES-256-CBC), ``fastd``
(aes128-gcm), ``tinc`` (1.0, router mode). Subjects whose
programs are missing are skipped with a note. Each pass runs every subject once, in the same order,
so every ratio compares numbers of the same pass; the table shows medians over passes, and ratios are
medians of the per-pass ratios.

Everything runs inside namespaces created here (prefix ``vbench``); they are removed at the end, also
after errors or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vpncloud.lab.netns import Netns, Topology  # noqa: E402

PY = sys.executable
A_UL, B_UL = "10.210.0.1", "10.210.0.2"
A_TUN, B_TUN = "10.211.0.1", "10.211.0.2"
PASSWORD = "bench-password"
CLK = os.sysconf("SC_CLK_TCK")
# one full-sized TCP segment on a 1,500-byte path, in bits: the unit of the CPU-per-packet column (µs)
SEGMENT_BITS = 1448 * 8

# --------------------------------------------------------------------------------------- helpers


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            parts = fh.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


@dataclass
class Sample:
    mbit1: float | None = None
    mbit4: float | None = None
    rtt_ms: float | None = None  # 50 pings/s
    rtt_busy_ms: float | None = None  # 1000 pings/s
    cpu1: float | None = None  # CPU seconds of the VPN processes (both sides) per second of run
    cpu4: float | None = None
    rss_idle_kb: int | None = None
    rss_busy_kb: int | None = None
    retr1: int | None = None
    note: str = ""


@dataclass
class Subject:
    name: str
    label: str
    start: Callable[[Topology, Netns, Netns, Path], list[subprocess.Popen[bytes]]]
    available: Callable[[], str | None]  # None = ok, else the reason it is skipped
    pids: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------- subjects


def _vpncloud_pair(
    topo: Topology,
    a: Netns,
    b: Netns,
    tmp: Path,
    command: list[str],
    extra: list[str],
    env: dict[str, str] | None,
) -> list[subprocess.Popen[bytes]]:
    """Both ends with the same original VpnCloud command line (ours takes the original's flags)."""
    return [_vpncloud_node(topo, ns, name, tmp, command, extra, env) for ns, name in ((a, "a"), (b, "b"))]


def _vpncloud_node(
    topo: Topology,
    ns: Netns,
    name: str,
    tmp: Path,
    command: list[str],
    extra: list[str],
    env: dict[str, str] | None,
) -> subprocess.Popen[bytes]:
    """One end (``a`` or ``b``) with the original's flags, pointed at the other end."""
    ip, peer = (A_TUN, B_UL) if name == "a" else (B_TUN, A_UL)
    args = [*command, "--no-port-forwarding", "-p", PASSWORD, "--ip", f"{ip}/24", "-c", f"{peer}:3210"]
    args += ["--algorithm", "aes256", "-d", "vbtun%d"]
    args += [arg.replace("{name}", name) for arg in extra]
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    return topo_popen(topo, ns, args, log, env)


def _ours_to_original(topo: Topology, a: Netns, b: Netns, tmp: Path) -> list[subprocess.Popen[bytes]]:
    """A mixed pair: ours (super-packets announced, offloads) sends to the original, which gets T1."""
    env = dict(os.environ, VPNCLOUD_DATAPLANE="super", PYTHONPATH=str(REPO))
    ours = _vpncloud_node(
        topo, a, "a", tmp, [PY, "-m", "vpncloud"], ["--control-socket", str(tmp / "a.sock")], env
    )
    return [ours, _vpncloud_node(topo, b, "b", tmp, [os.environ["VPNCLOUD_ORIGINAL"]], [], None)]


#: Switch mode over TAP devices (the same flags for ours and the original).
TAP_ARGS = ["-t", "tap", "-m", "switch"]


def _our_daemon(
    mode: str, args: list[str] | None = None, pure_python: bool = False
) -> Callable[[Topology, Netns, Netns, Path], list[subprocess.Popen[bytes]]]:
    def start(topo: Topology, a: Netns, b: Netns, tmp: Path) -> list[subprocess.Popen[bytes]]:
        env = dict(os.environ, VPNCLOUD_DATAPLANE=mode, PYTHONPATH=str(REPO))
        env["VPNCLOUD_PURE_PYTHON"] = "1" if pure_python else ""
        extra = ["--control-socket", str(tmp / "{name}.sock"), *(args or [])]
        return _vpncloud_pair(topo, a, b, tmp, [PY, "-m", "vpncloud"], extra, env)

    return start


def _original_with(
    args: list[str],
) -> Callable[[Topology, Netns, Netns, Path], list[subprocess.Popen[bytes]]]:
    def start(topo: Topology, a: Netns, b: Netns, tmp: Path) -> list[subprocess.Popen[bytes]]:
        return _vpncloud_pair(topo, a, b, tmp, [os.environ["VPNCLOUD_ORIGINAL"]], args, None)

    return start


_original = _original_with([])


def _floor(topo: Topology, a: Netns, b: Netns, tmp: Path) -> list[subprocess.Popen[bytes]]:
    """The least-Python T2 loop of ``bench/floor.py`` (a reference, not a VPN)."""
    script = str(REPO / "bench" / "floor.py")
    procs = []
    for ns, name, ip, peer in ((a, "a", A_TUN, B_UL), (b, "b", B_TUN, A_UL)):
        log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(topo_popen(topo, ns, [PY, script, f"{ip}/24", peer], log, None))
    return procs


def _wireguard(topo: Topology, a: Netns, b: Netns, tmp: Path) -> list[subprocess.Popen[bytes]]:
    keys = {}
    for side in "ab":
        priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
        pub = subprocess.run(
            ["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True
        ).stdout.strip()
        (tmp / f"wg{side}.key").write_text(priv + "\n")
        keys[side] = pub
    procs: list[subprocess.Popen[bytes]] = []
    # wireguard-go's control socket lives in /var/run/wireguard (not per namespace): unique names
    tag = topo.prefix[-6:]
    kernel = a.ip("link", "add", f"wg{tag}a", "type", "wireguard", check=False).returncode == 0
    for ns, ip, peer_ul, side, other in ((a, A_TUN, B_UL, "a", "b"), (b, B_TUN, A_UL, "b", "a")):
        dev = f"wg{tag}{side}"
        if not kernel:
            env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
            log = open(tmp / f"wg{side}.log", "wb")  # noqa: SIM115
            procs.append(topo_popen(topo, ns, ["wireguard-go", "-f", dev], log, env))
            wait_until(lambda ns=ns, dev=dev: dev in ns.run(["ip", "link"], check=False).stdout, 10)
        elif side == "b":
            ns.ip("link", "add", dev, "type", "wireguard")
        ns.run(
            [
                "wg",
                "set",
                dev,
                "listen-port",
                "51820",
                "private-key",
                str(tmp / f"wg{side}.key"),
                "peer",
                keys[other],
                "endpoint",
                f"{peer_ul}:51820",
                "allowed-ips",
                "10.211.0.0/24",
            ]
        )
        ns.ip("addr", "add", f"{ip}/24", "dev", dev)
        ns.ip("link", "set", dev, "mtu", "1420", "up")
    return procs


def _openvpn(topo: Topology, a: Netns, b: Netns, tmp: Path) -> list[subprocess.Popen[bytes]]:
    key = tmp / "ovpn.key"
    subprocess.run(["openvpn", "--genkey", "secret", str(key)], check=True, capture_output=True)
    procs = []
    for ns, ip, peer_ip, peer_ul, name in ((a, A_TUN, B_TUN, B_UL, "a"), (b, B_TUN, A_TUN, A_UL, "b")):
        args = [
            "openvpn",
            "--dev",
            "ovpn0",
            "--dev-type",
            "tun",
            "--proto",
            "udp",
            "--port",
            "1194",
            "--remote",
            peer_ul,
            "--ifconfig",
            ip,
            peer_ip,
            "--secret",
            str(key),
            "--cipher",
            "AES-256-CBC",
            "--auth",
            "SHA256",
            "--sndbuf",
            "4194304",
            "--rcvbuf",
            "4194304",
            "--txqueuelen",
            "1000",
            "--verb",
            "1",
        ]
        log = open(tmp / f"ovpn{name}.log", "wb")  # noqa: SIM115
        procs.append(topo_popen(topo, ns, args, log, None))
    return procs


def _fastd(topo: Topology, a: Netns, b: Netns, tmp: Path) -> list[subprocess.Popen[bytes]]:
    keys = {}
    for side in "ab":
        out = subprocess.run(["fastd", "--generate-key"], capture_output=True, text=True, check=True).stdout
        sec = re.search(r"Secret: ([0-9a-f]+)", out)
        pub = re.search(r"Public: ([0-9a-f]+)", out)
        assert sec and pub, out
        keys[side] = (sec.group(1), pub.group(1))
    procs = []
    for ns, ip, ul, peer_ul, side, other in (
        (a, A_TUN, A_UL, B_UL, "a", "b"),
        (b, B_TUN, B_UL, A_UL, "b", "a"),
    ):
        conf = tmp / f"fastd{side}.conf"
        conf.write_text(
            f'interface "fastd0";\nbind {ul}:10000;\nmode tun;\nmethod "aes128-gcm";\nmethod "null";\n'
            f'secret "{keys[side][0]}";\nmtu 1426;\n'
            f'on up "ip addr add {ip}/24 dev $INTERFACE && ip link set $INTERFACE up";\n'
            f'peer "{other}" {{ key "{keys[other][1]}"; remote {peer_ul}:10000; }}\n'
        )
        log = open(tmp / f"fastd{side}.log", "wb")  # noqa: SIM115
        procs.append(topo_popen(topo, ns, ["fastd", "-c", str(conf)], log, None))
    return procs


def _tinc(topo: Topology, a: Netns, b: Netns, tmp: Path) -> list[subprocess.Popen[bytes]]:
    dirs = {}
    for side, ul, ip, other in (("a", A_UL, A_TUN, "b"), ("b", B_UL, B_TUN, "a")):
        d = tmp / f"tinc{side}"
        (d / "hosts").mkdir(parents=True)
        (d / "tinc.conf").write_text(
            f"Name = {side}\nConnectTo = {other}\nInterface = tinc0\nDevice = /dev/net/tun\n"
            "Mode = router\nAddressFamily = ipv4\n"
        )
        (d / "tinc-up").write_text(
            f"#!/bin/sh\nip addr add {ip}/24 dev $INTERFACE\nip link set $INTERFACE mtu 1400 up\n"
        )
        (d / "tinc-up").chmod(0o755)
        (d / "hosts" / side).write_text(f"Address = {ul}\nSubnet = {ip}/32\n")
        subprocess.run(
            ["tincd", "-c", str(d), "-K", "2048"], input="\n\n", capture_output=True, text=True, check=True
        )
        dirs[side] = d
    for side, other in (("a", "b"), ("b", "a")):
        shutil.copy(dirs[other] / "hosts" / other, dirs[side] / "hosts" / other)
    procs = []
    for ns, side in ((a, "a"), (b, "b")):
        log = open(tmp / f"tinc{side}.log", "wb")  # noqa: SIM115
        procs.append(
            topo_popen(
                topo,
                ns,
                ["tincd", "-c", str(dirs[side]), "-D", "--pidfile", str(tmp / f"tinc{side}.pid")],
                log,
                None,
            )
        )
    return procs


def _needs(*programs: str) -> Callable[[], str | None]:
    def check() -> str | None:
        missing = [p for p in programs if shutil.which(p) is None]
        return f"not installed: {', '.join(missing)}" if missing else None

    return check


def _original_available() -> str | None:
    path = os.environ.get("VPNCLOUD_ORIGINAL")
    if not path:
        return "set VPNCLOUD_ORIGINAL to the original vpncloud 2.4 binary"
    return None if os.access(path, os.X_OK) else f"{path} is not executable"


def _wg_available() -> str | None:
    if shutil.which("wg") is None:
        return "not installed: wireguard-tools"
    probe = subprocess.run(["ip", "link", "add", "vbwgprobe", "type", "wireguard"], capture_output=True)
    if probe.returncode == 0:
        subprocess.run(["ip", "link", "del", "vbwgprobe"], capture_output=True)
        return None
    return None if shutil.which("wireguard-go") else "no wireguard kernel module and no wireguard-go"


SUBJECTS = {
    "raw": Subject("raw", "raw veth (no tunnel)", lambda *_: [], lambda: None),
    "t2": Subject("t2", "ours T2 (offloads + super-packets)", _our_daemon("super"), lambda: None),
    "t1": Subject("t1", "ours T1 (offloads, wire-compatible)", _our_daemon("wire"), lambda: None),
    "t2-py": Subject(
        "t2-py",
        "ours T2, Python kernels (VPNCLOUD_PURE_PYTHON=1)",
        _our_daemon("super", None, True),
        lambda: None,
    ),
    "t1-py": Subject(
        "t1-py",
        "ours T1, Python kernels (VPNCLOUD_PURE_PYTHON=1)",
        _our_daemon("wire", None, True),
        lambda: None,
    ),
    "sock": Subject("sock", "ours, socket offloads only (TUN)", _our_daemon("socket"), lambda: None),
    "off": Subject("off", "ours, no offloads", _our_daemon("off"), lambda: None),
    "tap": Subject("tap", "ours, TAP switch mode (offloads)", _our_daemon("super", TAP_ARGS), lambda: None),
    "tap-sock": Subject(
        "tap-sock",
        "ours, TAP switch mode, socket offloads only",
        _our_daemon("socket", TAP_ARGS),
        lambda: None,
    ),
    "original": Subject("original", "original VpnCloud 2.4", _original, _original_available),
    "original-tap": Subject(
        "original-tap",
        "original VpnCloud 2.4, TAP switch mode",
        _original_with(TAP_ARGS),
        _original_available,
    ),
    "mixed": Subject(
        "mixed",
        "ours (T1, offloads) to the original VpnCloud 2.4",
        _ours_to_original,
        _original_available,
    ),
    "floor": Subject(
        "floor", "floor: least-Python T2 loop (bench/floor.py, not a VPN)", _floor, lambda: None
    ),
    "wireguard": Subject("wireguard", "WireGuard", _wireguard, _wg_available),
    "openvpn": Subject("openvpn", "OpenVPN 2.6 (static key, AES-256-CBC)", _openvpn, _needs("openvpn")),
    "fastd": Subject("fastd", "fastd (aes128-gcm)", _fastd, _needs("fastd")),
    "tinc": Subject("tinc", "tinc 1.0 (router mode)", _tinc, _needs("tincd")),
}


def topo_popen(
    topo: Topology, ns: Netns, args: list[str], log: Any, env: dict[str, str] | None
) -> subprocess.Popen[bytes]:
    proc = ns.popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    topo.processes.append(proc)
    return proc


# --------------------------------------------------------------------------------------- measuring


def build(topo: Topology) -> tuple[Netns, Netns]:
    a = topo.namespace("a")
    b = topo.namespace("b")
    topo.veth(a, "eth0", b, "eth0")
    a.add_addr("eth0", f"{A_UL}/24")
    b.add_addr("eth0", f"{B_UL}/24")
    a.add_default_route("eth0")
    b.add_default_route("eth0")
    for ns in (a, b):
        with contextlib.suppress(Exception):
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", 1)
    return a, b


def ping_rtt(a: Netns, target: str, interval: str = "0.02", count: int = 50) -> float | None:
    r = a.run(["ping", "-n", "-c", str(count), "-i", interval, "-W", "1", target], check=False, timeout=30)
    times = [float(x) for x in re.findall(r"time=([0-9.]+) ms", r.stdout)]
    return statistics.median(times) if times else None


def iperf(a: Netns, target: str, streams: int, duration: int) -> tuple[float | None, int | None]:
    args = ["iperf3", "-c", target, "-t", str(duration), "-J", "-P", str(streams), "-O", "1"]
    r = a.run(args, check=False, timeout=duration + 30)
    try:
        data = json.loads(r.stdout)
        end = data["end"]
        return end["sum_received"]["bits_per_second"] / 1e6, int(end["sum_sent"].get("retransmits", 0))
    except (ValueError, KeyError, TypeError):
        return None, None


def measure(subject: Subject, duration: int, tmpdir: Path) -> Sample:
    sample = Sample()
    with Topology(prefix=f"vbench{os.getpid() % 1000}{subject.name[:3]}") as topo:
        a, b = build(topo)
        procs = subject.start(topo, a, b, tmpdir)
        target = B_UL if subject.name == "raw" else B_TUN
        if not wait_until(lambda: a.ping(target, count=1, timeout=0.5), 40):
            sample.note = "tunnel did not come up"
            return sample
        time.sleep(1.0)
        pids = [p.pid for p in procs]
        server = topo_popen(topo, b, ["iperf3", "-s"], subprocess.DEVNULL, None)
        time.sleep(0.5)
        sample.rtt_ms = ping_rtt(a, target)
        sample.rtt_busy_ms = ping_rtt(a, target, "0.001", 1000)
        if pids:
            time.sleep(1.0)
            sample.rss_idle_kb = proc_kb(pids[0], "VmRSS")
        for streams in (1, 4):
            before = [cpu_seconds(p) for p in pids]
            t0 = time.monotonic()
            mbit, retr = iperf(a, target, streams, duration)
            elapsed = time.monotonic() - t0
            cpu = sum(cpu_seconds(p) for p in pids) - sum(before)
            load = cpu / elapsed if pids else None
            if streams == 1:
                sample.mbit1, sample.cpu1, sample.retr1 = mbit, load, retr
            else:
                sample.mbit4, sample.cpu4 = mbit, load
            time.sleep(1.0)
        if pids:
            sample.rss_busy_kb = proc_kb(pids[0], "VmHWM")
        server.terminate()
    return sample


# --------------------------------------------------------------------------------------- report


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def report(
    results: dict[str, list[Sample]],
    baselines: list[str],
    passes: int,
    duration: int,
    skipped: dict[str, str],
) -> str:
    lines = []
    header = (
        "| subject | TCP 1 stream Mbit/s | TCP 4 streams Mbit/s | ping RTT ms 50/s / 1000/s "
        "| VPN CPU (A+B) 1 stream "
        "| Gbit/s per VPN core | VPN CPU µs per segment (A+B) | RSS idle / busy MiB |"
    )
    for base in baselines:
        header += f" x {base} (1 / 4 streams) |"
    lines.append(header)
    lines.append("|" + "---|" * (header.count("|") - 1))
    for name, samples in results.items():
        m1 = med([s.mbit1 for s in samples])
        m4 = med([s.mbit4 for s in samples])
        cpu = med([s.cpu1 for s in samples])
        per_core = med([(s.mbit1 / 1000 / s.cpu1) if s.mbit1 and s.cpu1 else None for s in samples])
        per_segment = med(
            [(s.cpu1 * SEGMENT_BITS / s.mbit1) if s.mbit1 and s.cpu1 else None for s in samples]
        )
        rss_i = med([s.rss_idle_kb / 1024 if s.rss_idle_kb else None for s in samples])
        rss_b = med([s.rss_busy_kb / 1024 if s.rss_busy_kb else None for s in samples])
        rtt = med([s.rtt_ms for s in samples])
        rtt_busy = med([s.rtt_busy_ms for s in samples])
        row = (
            f"| {SUBJECTS[name].label} | {fmt(m1)} | {fmt(m4)} | {fmt(rtt, '.3f')} / {fmt(rtt_busy, '.3f')} "
            f"| {fmt(cpu * 100 if cpu is not None else None)} % | {fmt(per_core, '.2f')} "
            f"| {fmt(per_segment, '.1f')} | {fmt(rss_i, '.1f')} / {fmt(rss_b, '.1f')} |"
        )
        for base in baselines:
            ref = results.get(base)
            if ref is None:
                row += " - |"
                continue
            r1 = med(
                [
                    s.mbit1 / r.mbit1 if s.mbit1 and r.mbit1 else None
                    for s, r in zip(samples, ref, strict=False)
                ]
            )
            r4 = med(
                [
                    s.mbit4 / r.mbit4 if s.mbit4 and r.mbit4 else None
                    for s, r in zip(samples, ref, strict=False)
                ]
            )
            row += f" {fmt(r1, '.3f')} / {fmt(r4, '.3f')} |"
        lines.append(row)
    lines.append("")
    lines.append(
        f"Medians over {passes} passes of {duration} s per iperf3 run; ratios are medians of per-pass "
        "ratios (same pass, same conditions). VPN CPU = CPU seconds of both VPN processes per wall "
        "second during the 1-stream run (200 % = both cores). Gbit/s per VPN core = 1-stream "
        "throughput / that CPU share. VPN CPU µs per segment = that CPU time per 1,448 bytes of TCP "
        "payload (one full-sized segment of a 1,500-byte path), both sides together. "
        "RSS = one VPN process: VmRSS when idle after the handshake, "
        "VmHWM (peak) after the traffic."
    )
    lines.append("")
    lines.append("All passes (1 stream / 4 streams Mbit/s, retransmits of the 1-stream run):")
    lines.append("")
    for name, samples in results.items():
        cells = ", ".join(
            f"{fmt(s.mbit1)}/{fmt(s.mbit4)} (r {s.retr1 if s.retr1 is not None else '-'})"
            + (f" [{s.note}]" if s.note else "")
            for s in samples
        )
        lines.append(f"* {name}: {cells}")
    if skipped:
        lines.append("")
        for name, why in skipped.items():
            lines.append(f"* skipped {name}: {why}")
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) // 1024 // 1024} GiB RAM"
    return f"{os.cpu_count()} x {cpu}{mem}, Linux {platform.release()}, Python {platform.python_version()}"


START_MARK = "<!-- bench:start -->"
END_MARK = "<!-- bench:end -->"


def write_report(path: Path, text: str) -> None:
    """Replace the section between the bench markers of ``path`` (or write the whole file)."""
    old = path.read_text() if path.exists() else ""
    if START_MARK in old and END_MARK in old:
        head, rest = old.split(START_MARK, 1)
        _, tail = rest.split(END_MARK, 1)
        path.write_text(f"{head}{START_MARK}\n{text}{END_MARK}{tail}")
    else:
        path.write_text(f"{START_MARK}\n{text}{END_MARK}\n")


# ------------------------------------------------------------------------------------ core micro


def _tso_read(payload_len: int, mss: int) -> tuple[bytes, bytes]:
    """A TCP/IPv4 super-packet as an offloading TUN hands it over: virtio header and packet (TCP
    checksum field = pseudo-header sum; the figures do not depend on the checksums being right)."""
    import struct

    from vpncloud.fastpath import offload

    payload = bytes(range(256)) * (payload_len // 256 + 1)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 0, 1, 0x4000, 64, 6, 0, bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))
    )
    tcp = struct.pack("!HHLLBBHHH", 40000, 5201, 1000, 555, 5 << 4, 0x18, 500, 0, 0)
    hdr = offload.VNET_HDR.pack(offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 40, mss, 20, 16)
    return hdr, ip + tcp + payload[:payload_len]


def micro(rounds: int, batches: int) -> str:
    """CPU per packet of T1's steps in one process, C kernels against Python ones, interleaved.

    One 64 KB TSO read at MTU 1427 (46 segments of 1,387 bytes) through what T1 runs for it:
    ``segment`` (offload.py: TCP segmentation into rows, numpy), ``seal`` (``encrypt_rows``:
    the kernels), on the receiver ``open`` (``decrypt_train`` of the GRO train: the kernels) and
    ``coalesce`` (offload.py: the device write, merged by the ``coalesce_rows`` kernel). CPU time
    (``process_time``) over segments. Each round runs both kernels one after the other, so noise
    hits both alike; the table shows the median over rounds and the ratio of the medians (issue 21).
    """
    import random

    from vpncloud import fastpath
    from vpncloud.core.crypto_core import CryptoCore
    from vpncloud.core.primitives import Algorithm
    from vpncloud.fastpath import offload
    from vpncloud.fastpath.rows import PacketRows

    names = ["python"]
    try:
        fastpath.implementation("c")
        names.insert(0, "c")
    except ImportError:
        print("micro: C kernels not built, Python only", file=sys.stderr)
    hdr, packet = _tso_read(46 * 1387, 1387)
    chosen, chosen_tcp_rows = fastpath.coalesce_rows, fastpath.tcp_rows
    steps = ("segment", "seal", "open", "coalesce")
    results: dict[tuple[str, str, str], list[float]] = {}
    for alg in (Algorithm.AES256, Algorithm.CHACHA20):
        key = random.Random(1).randbytes(alg.key_len)
        for _ in range(rounds):
            for name in names:
                kernels = fastpath.implementation(name)
                sender = CryptoCore(alg, key, True, random.Random(2), kernels)
                receiver = CryptoCore(alg, key, False, random.Random(3), kernels)
                # offload.py calls the package's kernels: this round's, C or the Python twin
                fastpath.tcp_rows = kernels.tcp_rows
                t0 = time.process_time()
                segs = [offload.segment_any(hdr, packet) for _ in range(batches)]
                t1 = time.process_time()
                fastpath.tcp_rows = chosen_tcp_rows
                trains = [sender.encrypt_rows(0, rows) for rows in segs]  # type: ignore[arg-type]
                t2 = time.process_time()
                opened = [receiver.decrypt_train(bytes(t.buf), t.seg) for t in trains]
                fastpath.coalesce_rows = kernels.coalesce_rows
                t3 = time.process_time()
                for (buf, lengths), train in zip(opened, trains, strict=True):
                    offload.coalesce([PacketRows(memoryview(buf), train.seg - 24, [n - 1 for n in lengths])])
                t4 = time.process_time()
                fastpath.coalesce_rows = chosen
                count = len(opened[0][1])
                assert min(opened[0][1]) > 0  # every frame opened: the work was real
                per = 1e6 / (batches * count)
                for step, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    results.setdefault((alg.name, step, name), []).append(dt * per)
    lines = [
        f"Core micro, {rounds} interleaved rounds x {batches} TSO reads of {count} segments, "
        "CPU µs per packet (median over rounds):",
        "",
        "| algorithm | step | " + " | ".join(names) + (" | Python / C |" if "c" in names else " |"),
        "|---" * (len(names) + 2 + ("c" in names)) + "|",
    ]
    for alg in (Algorithm.AES256, Algorithm.CHACHA20):
        total = dict.fromkeys(names, 0.0)
        for step in steps:
            meds = {n: statistics.median(results[(alg.name, step, n)]) for n in names}
            for n in names:
                total[n] += meds[n]
            cells = " | ".join(f"{meds[n]:.3f}" for n in names)
            ratio = f" | {meds['python'] / meds['c']:.2f}x" if "c" in names else ""
            lines.append(f"| {alg.name} | {step} | {cells}{ratio} |")
        cells = " | ".join(f"**{total[n]:.3f}**" for n in names)
        ratio = f" | {total['python'] / total['c']:.2f}x" if "c" in names else ""
        lines.append(f"| {alg.name} | all four | {cells}{ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--micro",
        type=int,
        metavar="ROUNDS",
        help="only the core micro benchmark (no namespaces, no root): C against Python kernels",
    )
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="seconds per iperf3 run")
    p.add_argument("--subjects", default=",".join(SUBJECTS), help="comma list of " + ", ".join(SUBJECTS))
    p.add_argument("--baselines", default="raw,original,off", help="ratios are computed against these")
    p.add_argument("--write", metavar="FILE", help="also write the report to FILE (e.g. docs/performance.md)")
    p.add_argument("--title", default="", help="extra line for the report")
    ns = p.parse_args(argv)
    if ns.micro:
        print(micro(ns.micro, 50))
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("iperf3", "ping", "ip"):
        if shutil.which(tool) is None:
            print(f"needs {tool}", file=sys.stderr)
            return 2
    wanted = [s.strip() for s in ns.subjects.split(",") if s.strip()]
    skipped: dict[str, str] = {}
    subjects = []
    for name in wanted:
        if name not in SUBJECTS:
            print(f"unknown subject {name}", file=sys.stderr)
            return 2
        why = SUBJECTS[name].available()
        if why:
            skipped[name] = why
            print(f"skipping {name}: {why}", file=sys.stderr)
        else:
            subjects.append(SUBJECTS[name])
    results: dict[str, list[Sample]] = {s.name: [] for s in subjects}
    started = datetime.datetime.now(datetime.UTC)
    old_int = signal.getsignal(signal.SIGINT)
    try:
        for i in range(ns.passes):
            for subject in subjects:
                with tempfile.TemporaryDirectory(prefix="vbench") as tmp:
                    try:
                        sample = measure(subject, ns.duration, Path(tmp))
                    except Exception as exc:  # one broken subject must not end the run
                        sample = Sample(note=f"error: {type(exc).__name__}: {exc}"[:200])
                    if sample.note:
                        logs = " | ".join(
                            f.read_text(errors="replace")[-300:].replace("\n", " ")
                            for f in Path(tmp).glob("*.log")
                        )
                        sample.note += f" logs: {logs[-400:]}" if logs else ""
                results[subject.name].append(sample)
                print(
                    f"pass {i + 1} {subject.name}: 1 stream {fmt(sample.mbit1)} Mbit/s, 4 streams "
                    f"{fmt(sample.mbit4)} Mbit/s, rtt {fmt(sample.rtt_ms, '.3f')} / "
                    f"{fmt(sample.rtt_busy_ms, '.3f')} ms, cpu "
                    f"{fmt(sample.cpu1, '.2f')} {sample.note}",
                    flush=True,
                )
    finally:
        signal.signal(signal.SIGINT, old_int)
    baselines = [b.strip() for b in ns.baselines.split(",") if b.strip() in results]
    table = report(results, baselines, ns.passes, ns.duration, skipped)
    print(table)
    if ns.write:
        original = os.environ.get("VPNCLOUD_ORIGINAL")
        original_env = f"VPNCLOUD_ORIGINAL={original} " if original else ""
        text = (
            f"### Data-plane benchmark, {started:%Y-%m-%d %H:%M} UTC\n\n"
            f"Machine: {machine()}.\n"
            f"Command: `{original_env}bench/dataplane.py --passes {ns.passes} --duration {ns.duration} "
            f"--subjects {ns.subjects} --baselines {ns.baselines}`.\n"
            + (f"{ns.title}\n" if ns.title else "")
            + "\n"
            + table
            + "\n"
        )
        write_report(Path(ns.write), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
