"""Security benchmark (run as root; not a test): floods, replays, churn. Prints a table.

    .venv/bin/python bench/security.py [--rate 50000] [--seconds 15] [--baseline /work/main] [--skip churn]

1. Floods (issue 24): two real daemons (a, b) in namespaces, iperf3 through the tunnel a -> b, while
   an attacker namespace floods b's UDP port at up to ``--rate`` datagrams/s with each kind of
   ``FLOODS`` (forged PINGs from one, 250 or 65,536 source addresses, PINGs with a valid key hash,
   one genuine PING replayed from 65,536 spoofed sources). Per kind: throughput as a share of the
   unloaded run, b's CPU, datagrams b sent to the spoofed range during and in ``--after`` seconds
   after the flood (an iptables counter: those addresses never answer), b's RSS growth, whether the
   session survived. ``--baseline /work/main`` runs another source tree interleaved (every kind on
   both before the next kind); ``VPNCLOUD_ORIGINAL=/path/to/vpncloud`` adds the original.
2. Replayed DATA: the real crypto cores of two nodes (in-process, like the daemon's receive path): every
   DATA datagram a sent is replayed to b, (i) right away (inside the replay window of 1-2 ticks, where
   the original accepts duplicates) and (ii) after 3 ticks; fraction rejected.
3. Churn: ``--nodes`` daemons, a ping mesh between all tunnel addresses; for ``--churn-seconds`` a random
   node is killed (SIGKILL) and restarted every few seconds. Then: time until every pair pings again,
   ping packets sent/lost during the churn.
4. Core cost of a flood (``--only-core``, no root, no sockets): CPU microseconds per forged handshake
   datagram in one node's core (``Node.receive_datagram`` on a virtual clock at 50,000/s), per kind of
   ``CORE_KINDS``; with ``--baseline`` the other tree is measured in the same run, alternating child
   processes round by round (min and median of ``--rounds``).

All traffic stays in namespaces this script creates; they are removed at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vpncloud.daemon.control import status_or_none  # noqa: E402
from vpncloud.lab.netns import Netns, NetnsError, Topology  # noqa: E402

PY = sys.executable
PASSWORD = "bench-security"
CLK = os.sysconf("SC_CLK_TCK")
#: ``--pin``: command prefixes that put the tunnel (daemons, iperf3) on CPU 0 and the attacker on CPU 1,
#: so the flooder's own CPU does not come out of the tunnel's share, as when it runs on another machine.
TUNNEL_CPU: list[str] = []
FLOOD_CPU: list[str] = []


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


class Daemon:
    """One node: ours from a source tree (``PYTHONPATH``), or the original binary (no status)."""

    def __init__(
        self,
        topo: Topology,
        ns: Netns,
        name: str,
        tmp: Path,
        ip: str,
        peers: list[str],
        tree: Path | None = None,
        original: str | None = None,
    ) -> None:
        self.topo, self.ns, self.name, self.tmp, self.ip, self.peers = topo, ns, name, tmp, ip, peers
        self.tree, self.original = tree or ROOT, original
        self.sock = str(tmp / f"{name}.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PASSWORD"}
        common = ["--no-port-forwarding", "-p", PASSWORD, "--ip", f"{self.ip}/24"]
        if self.original:
            args = [self.original, *common]
            log = open(self.tmp / f"{self.name}.log", "wb")  # noqa: SIM115 - the child owns it
        else:
            # -P: the tree comes from PYTHONPATH, not from the current directory
            args = [PY, "-P", "-m", "vpncloud", *common, "--control-socket", self.sock,
                    "--log-file", str(self.tmp / f"{self.name}.log")]  # fmt: skip
            env["PYTHONPATH"] = str(self.tree)
            log = None
        for p in self.peers:
            args += ["-c", p]
        args = [*TUNNEL_CPU, *args]
        self.proc = self.topo.spawn(self.ns, args, env=env, stdout=log, stderr=subprocess.STDOUT)
        if log is not None:
            log.close()
        if not self.original:
            wait_for(lambda: status_or_none(self.sock), 30, f"{self.name} control socket")

    def status(self) -> dict[str, Any]:
        return {} if self.original else status_or_none(self.sock) or {}

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        # a killed node leaves its device behind in the namespace; the restart must create it anew
        for link in self.ns.links():
            if link.startswith("vpncloud"):
                self.ns.ip("link", "del", link, check=False)


# --- 1. flood -------------------------------------------------------------------------------------

#: Flood kinds of issue 24: (name, payload, sources, port). Sources: ``one`` = one real address (UDP
#: socket), ``random`` = 250 spoofed addresses, ``wide`` = 65,536 spoofed addresses (10.77.0.0/16),
#: random ports. Payloads: ``junk`` = 0xFF + random bytes (a PING with a random key hash),
#: ``keyhash`` = a genuine PING with a broken signature (passes the key-hash filter),
#: ``keyhash_vary`` = the same with a different broken signature from each source,
#: ``replay`` = one genuine, validly signed PING.
#: The ``control_`` kinds send the same flood to ``SINK_PORT`` on b, where a socket is bound and never
#: read: the kernel drops the flood on that full queue, so the tunnel loses only what the flood costs the
#: machine itself (the flooder's CPU, the kernel's receive path). That is the ceiling a daemon could reach
#: if a flood datagram cost it nothing.
SINK_PORT = 3299
FLOODS = [
    ("control_one_source", "junk", "one", SINK_PORT),
    ("ping_one_source", "junk", "one", 3210),
    ("ping_random_sources", "junk", "random", 3210),
    ("control_wide_range", "junk", "wide", SINK_PORT),
    ("ping_wide_range", "junk", "wide", 3210),
    ("valid_key_hash_random", "keyhash", "random", 3210),
    ("valid_key_hash_varied_wide", "keyhash_vary", "wide", 3210),
    ("replayed_ping_random", "replay", "wide", 3210),
]
SPOOF_NET = "10.77.0.0/16"

FLOODER = textwrap.dedent("""
    import os, random, socket, struct, sys, time
    kind, sources, target, port, rate, seconds, ping_hex = sys.argv[1:8]
    port, rate, seconds = int(port), int(rate), float(seconds)
    ping = bytes.fromhex(ping_hex)
    rnd = random.Random(24)
    if kind == "junk":
        payloads = [b"\\xff" + os.urandom(150) for _ in range(64)]
    elif kind == "keyhash":
        payloads = [ping[:-1] + bytes((ping[-1] ^ 1,))]
    elif kind == "keyhash_vary":  # a different (canonical) signature per source: no cache helps
        payloads = [ping[:-32] + rnd.randbytes(2) + ping[-30:] for _ in range(65536)]
    else:
        payloads = [ping]
    if sources == "one":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        packets = payloads
        send = lambda data: s.sendto(data, (target, port))
    else:
        count = 250 if sources == "random" else 65536
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.setblocking(False)
        dst = socket.inet_aton(target)
        packets = []
        for i in range(count):
            src = bytes((10, 77, i >> 8, i & 255)) if count > 250 else bytes((10, 77, 1, 1 + i))
            data = payloads[i % len(payloads)]
            udp = struct.pack("!HHHH", rnd.randrange(1024, 65535), port, 8 + len(data), 0) + data
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst)
            packets.append(ip + udp)
        rnd.shuffle(packets)
        send = lambda data: s.sendto(data, (target, 0))
    n = len(packets)
    sent, start, batch = 0, time.monotonic(), 200
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        due = int((now - start) * rate)
        if sent >= due:
            time.sleep(min(0.002, batch / rate))
            continue
        for i in range(sent, sent + min(batch, due - sent)):
            try:
                send(packets[i % n])
            except (BlockingIOError, OSError):
                pass
        sent += min(batch, due - sent)
    print(sent)
""")


def genuine_ping() -> bytes:
    import random as r

    from vpncloud.core.identity import Identity
    from vpncloud.core.messages import NodeInfo
    from vpncloud.core.peer_crypto import CryptoConfig, PeerCrypto
    from vpncloud.core.primitives import Algorithm

    cfg = CryptoConfig(Identity.from_config(password=PASSWORD), [(Algorithm.AES128, 100.0)])
    info = NodeInfo(node_id=bytes(16), peers=[], claims=[], peer_timeout=300, addrs=[]).encode()
    _crypto, ping = PeerCrypto.initiator(cfg, r.Random(3).randbytes(16), info, r.Random(4))
    return ping


def iperf(client: Netns, server_ip: str, seconds: float) -> float:
    try:
        args = [*TUNNEL_CPU, "iperf3", "-c", server_ip, "-t", str(seconds), "-J"]
        r = client.run(args, check=False, timeout=seconds + 30)
    except NetnsError:
        return 0.0  # iperf3 stalled (its control connection starved by the flood): nothing got through
    try:
        data = json.loads(r.stdout)
    except json.JSONDecodeError:
        return 0.0
    if "error" in data:
        return 0.0  # the tunnel is gone (the session did not survive): no throughput
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6


def _reflected(ns: Netns) -> int:
    """Datagrams b sent to the spoofed range so far (an iptables OUTPUT counter in b's namespace)."""
    out = ns.iptables("-L", "OUTPUT", "-v", "-x", "-n").stdout
    for line in out.splitlines():
        if "10.77.0.0/16" in line:
            return int(line.split()[0])
    return 0


class Setup:
    """a -> b with iperf3 through the tunnel, and an attacker namespace x, for one implementation."""

    def __init__(self, topo: Topology, tmp: Path, label: str, tree: Path | None, original: str | None):
        self.label = label
        sw = f"sw{label[:4]}"
        self.a_ns = topo.node(f"{label[:4]}a", "10.76.0.1/16", switch=sw)
        self.b_ns = topo.node(f"{label[:4]}b", "10.76.0.2/16", switch=sw)
        self.x_ns = topo.node(f"{label[:4]}x", "10.76.0.3/16", switch=sw)
        self.x_ns.add_addr("eth0", "10.77.1.1/16")  # ping_one_source comes from a real address
        self.b_ns.iptables("-A", "OUTPUT", "-d", SPOOF_NET, "-p", "udp")
        d = tmp / label
        d.mkdir()
        self.b = Daemon(topo, self.b_ns, "b", d, "10.120.0.2", [], tree, original)
        self.b.start()
        self.a = Daemon(topo, self.a_ns, "a", d, "10.120.0.1", ["10.76.0.2:3210"], tree, original)
        self.a.start()
        wait_for(lambda: self.a_ns.ping("10.120.0.2"), 30, f"{label}: tunnel a -> b")
        topo.spawn(self.b_ns, [*TUNNEL_CPU, "iperf3", "-s", "-B", "10.120.0.2"])
        # the control floods' target: bound, never read
        sink = "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
        topo.spawn(self.b_ns, [PY, "-c", f"{sink}; s.bind(('', {SINK_PORT})); time.sleep(1e6)"])
        wait_for(lambda: ":5201" in self.b_ns.run(["ss", "-ltn"], check=False).stdout, 10, "iperf3 server")
        self.topo = topo
        self.unloaded = 0.0
        self.no_iperf = False

    def run(
        self, kind: str, payload: str, sources: str, port: int, rate: int, seconds: float, after: float
    ) -> dict:
        b = self.b
        assert b.proc is not None
        st0 = b.status()
        rss0 = b.rss_mb()
        cpu0 = cpu_seconds(b.proc.pid)
        t0 = time.monotonic()
        flooder = None
        if kind != "unloaded":
            flooder = self.x_ns.popen(
                [
                    *FLOOD_CPU,
                    PY,
                    "-c",
                    FLOODER,
                    payload,
                    sources,
                    "10.76.0.2",
                    str(port),
                    str(rate),
                    str(seconds + 1),
                    PING_HEX,
                ],
                stdout=subprocess.PIPE,
            )
            self.topo.processes.append(flooder)
        if self.no_iperf:
            time.sleep(seconds)  # the flood runs that long; nothing to await
            mbit = 0.0
        else:
            mbit = iperf(self.a_ns, "10.120.0.2", seconds)
        cpu_s = cpu_seconds(b.proc.pid) - cpu0
        cpu = cpu_s / (time.monotonic() - t0)
        sent = 0
        if flooder is not None:
            out, _ = flooder.communicate(timeout=60)
            sent = int(out.decode().strip() or 0)
        rss1 = b.rss_mb()
        reflected_during = _reflected(self.b_ns)
        if kind != "unloaded":
            time.sleep(after)  # the window after the flood in which nothing may go to the range
        reflected_after = _reflected(self.b_ns) - reflected_during
        self.b_ns.iptables("-Z", "OUTPUT")
        st1 = b.status()
        if kind == "unloaded":
            self.unloaded = mbit
        alive = b.proc.poll() is None and self.a_ns.ping("10.120.0.2", count=3, timeout=2.0)
        dp0, dp1 = st0.get("dataplane") or {}, st1.get("dataplane") or {}
        reads = dp1.get("listen_socket_datagrams", 0) - dp0.get("listen_socket_datagrams", 0)
        return {
            "impl": self.label,
            "flood": kind,
            "mbit": round(mbit, 1),
            "share_pct": round(100 * mbit / self.unloaded) if self.unloaded else 0,
            "b_cpu_pct": round(100 * cpu),
            "flood_sent": sent,
            "to_range_during": reflected_during,
            "to_range_after": reflected_after,
            "rss_growth_mb": round(rss1 - rss0, 1),
            "listen_reads": reads,
            # with --no-iperf: what one flood datagram the daemon read cost it (reads, dispatch, guard)
            "b_cpu_us_per_read": round(1e6 * cpu_s / reads, 2) if reads and self.no_iperf else "",
            "session_ok": bool(alive) and (b.original is not None or bool(st1.get("peers"))),
        }


PING_HEX = ""


def bench_flood(
    tmp: Path,
    rate: int,
    seconds: float,
    after: float,
    baseline: Path | None,
    kinds: list[str],
    no_iperf: bool = False,
) -> list[dict[str, Any]]:
    global PING_HEX
    PING_HEX = genuine_ping().hex()
    rows = []
    impls: list[tuple[str, Path | None, str | None]] = [("ours", None, None)]
    if baseline is not None:
        impls.append(("main", baseline, None))
    if os.environ.get("VPNCLOUD_ORIGINAL"):
        impls.append(("original", None, os.environ["VPNCLOUD_ORIGINAL"]))
    with Topology() as topo:
        setups = [Setup(topo, tmp, label, tree, original) for label, tree, original in impls]
        for setup in setups:
            setup.no_iperf = no_iperf
        for kind, payload, sources, port in [("unloaded", "", "", 0), *(f for f in FLOODS if f[0] in kinds)]:
            # interleaved: every implementation takes each flood before the next flood starts
            for setup in setups:
                row = setup.run(kind, payload, sources, port, rate, seconds, after)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


# --- 2. replayed DATA -----------------------------------------------------------------------------


def bench_replay(count: int = 2000) -> dict[str, Any]:
    import logging

    from vpncloud.core.identity import Identity
    from vpncloud.core.node import Node, NodeConfig
    from vpncloud.core.peer_crypto import CryptoConfig
    from vpncloud.core.primitives import Algorithm
    from vpncloud.core.types import Range
    from vpncloud.sim.harness import ipv4_packet

    logging.getLogger("vpncloud").setLevel(logging.CRITICAL)  # 4000 "Old nonce rejected" lines
    cfg = CryptoConfig(Identity.from_config(password=PASSWORD), [(Algorithm.AES128, 100.0)])
    a = Node(NodeConfig(claims=[Range(bytes([10, 99, 0, 1]), 32)]), cfg, 0.0, random.Random(1))
    b = Node(NodeConfig(claims=[Range(bytes([10, 99, 0, 2]), 32)]), cfg, 0.0, random.Random(2))
    aa, ba = ("::ffff:10.0.0.1", 3210), ("::ffff:10.0.0.2", 3210)
    a.connect([ba], 0.0)
    a.handle_timer(0.0)  # the PONG is paid for by a repeated PING (amplification budget)
    for _ in range(6):
        for d, _x in a.datagrams_to_send():
            b.receive_datagram(d, aa, 0.0)
        for d, _x in b.datagrams_to_send():
            a.receive_datagram(d, ba, 0.0)
    assert a.peers and b.peers
    b.packets_to_device()
    captured = []
    for i in range(count):
        a.receive_packet(ipv4_packet("10.99.0.1", "10.99.0.2", i.to_bytes(4, "big")), 0.5)
        for d, _x in a.datagrams_to_send():
            captured.append(d)
            b.receive_datagram(d, aa, 0.5)
    delivered = len(b.packets_to_device())
    # (i) replay at once (same tick)
    for d in captured:
        b.receive_datagram(d, aa, 0.6)
    accepted_now = len(b.packets_to_device())
    # (ii) replay after 3 ticks (both nodes keep their session alive)
    now = 0.6
    for _ in range(3):
        now += 1.0
        for n in (a, b):
            n.handle_timer(now)
        for d, _x in a.datagrams_to_send():
            b.receive_datagram(d, aa, now)
        for d, _x in b.datagrams_to_send():
            a.receive_datagram(d, ba, now)
        b.packets_to_device()
    for d in captured:
        b.receive_datagram(d, aa, now)
    accepted_late = len(b.packets_to_device())
    return {
        "sent": count,
        "delivered": delivered,
        "replayed_in_window_rejected_pct": round(100 * (1 - accepted_now / count), 2),
        "replayed_after_3_ticks_rejected_pct": round(100 * (1 - accepted_late / count), 2),
    }


# --- 4. core cost per flood datagram -------------------------------------------------------------

#: (name, payload, sources): ``keyhash`` = one genuine PING with a broken signature (the bench's
#: valid-key-hash flood), ``keyhash_vary`` = the same with a different signature in every datagram
#: (the attacker defeats any cache of bad bytes), ``junk`` = random key hashes; 250 sources with fixed
#: random ports, or 65,536 addresses (``wide``).
CORE_KINDS = [
    ("valid_key_hash", "keyhash", 250),
    ("valid_key_hash_wide", "keyhash", 65536),
    ("valid_key_hash_varied_sig", "keyhash_vary", 250),
    ("random_key_hash", "junk", 250),
]

CORE_CHILD = textwrap.dedent("""
    import logging, random, sys, time
    tree, payload, nsrc, count, password = sys.argv[1:6]
    nsrc, count = int(nsrc), int(count)
    sys.path.insert(0, tree)
    from vpncloud.core.identity import Identity
    from vpncloud.core.messages import NodeInfo
    from vpncloud.core.node import Node, NodeConfig
    from vpncloud.core.peer_crypto import CryptoConfig, PeerCrypto
    from vpncloud.core.primitives import Algorithm
    logging.getLogger("vpncloud").setLevel(logging.CRITICAL)
    cfg = CryptoConfig(Identity.from_config(password=password), [(Algorithm.AES128, 100.0)])
    info = NodeInfo(node_id=bytes(16), peers=[], claims=[], peer_timeout=300, addrs=[]).encode()
    ping = PeerCrypto.initiator(cfg, random.Random(3).randbytes(16), info, random.Random(4))[1]
    rnd = random.Random(24)
    if payload == "keyhash":
        datagrams = [ping[:-1] + bytes((ping[-1] ^ 1,))]
    elif payload == "keyhash_vary":
        # the low bytes of S: a canonical scalar still, so each costs a whole Ed25519 verify
        datagrams = [ping[:-32] + rnd.randbytes(2) + ping[-30:] for _ in range(50000)]
    else:
        datagrams = [b"\\xff" + rnd.randbytes(150) for _ in range(64)]
    addrs = [(f"::ffff:10.77.{i >> 8}.{i & 255}", rnd.randrange(1024, 65535)) for i in range(nsrc)]
    node = Node(NodeConfig(), cfg, 0.0, random.Random(1))
    nd, rate = len(datagrams), 50000.0

    def run(first, n):
        for i in range(first, first + n):
            now = i / rate
            node.receive_datagram(datagrams[i % nd], addrs[i % nsrc], now)
            if i % 1000 == 0:
                node.handle_timer(now)
                node.datagrams_to_send()

    run(0, count // 5)  # warm-up: tables filled, first signature checks done
    t0 = time.process_time()
    run(count // 5, count)
    print((time.process_time() - t0) / count * 1e6)
""")


def bench_core(baseline: Path | None, rounds: int, count: int) -> list[dict[str, Any]]:
    trees = [("ours", ROOT)] + ([("baseline", baseline)] if baseline else [])
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for kind, payload, nsrc in CORE_KINDS:
            for label, tree in trees:  # alternating, so both see the same machine load
                out = subprocess.run(
                    [PY, "-c", CORE_CHILD, str(tree), payload, str(nsrc), str(count), PASSWORD],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                samples.setdefault((kind, label), []).append(float(out.stdout.strip()))
    rows = []
    for kind, _payload, _nsrc in CORE_KINDS:
        row: dict[str, Any] = {"flood": kind}
        for label, _tree in trees:
            values = sorted(samples[(kind, label)])
            row[f"{label} us min"] = f"{values[0]:.2f}"
            row[f"{label} us median"] = f"{values[len(values) // 2]:.2f}"
        rows.append(row)
    return rows


# --- 3. churn -------------------------------------------------------------------------------------


def bench_churn(tmp: Path, n: int, churn_seconds: float, seed: int = 1) -> dict[str, Any]:
    rnd = random.Random(seed)
    with Topology() as topo:
        nss = [topo.node(f"n{i}", f"10.78.0.{i + 1}/24") for i in range(n)]
        ips = [f"10.121.0.{i + 1}" for i in range(n)]
        daemons = []
        for i in range(n):
            peers = [f"10.78.0.{j + 1}:3210" for j in range(n) if j != i]
            d = Daemon(topo, nss[i], f"n{i}", tmp, ips[i], peers)
            d.start()
            daemons.append(d)

        def whole() -> bool:
            return all(
                nss[i].ping(ips[j], count=1, timeout=1.0) for i in range(n) for j in range(n) if i != j
            )

        wait_for(whole, 60, "initial full mesh")
        pingers = []
        duration = int(churn_seconds) + 2
        for i in range(n):
            for j in range(n):
                if i != j:
                    p = nss[i].popen(["ping", "-i", "0.2", "-W", "1", "-w", str(duration), ips[j]],
                                     stdout=subprocess.PIPE)  # fmt: skip
                    topo.processes.append(p)
                    pingers.append(p)
        kills = 0
        end = time.monotonic() + churn_seconds
        while time.monotonic() < end:
            victim = rnd.choice(daemons)
            victim.kill()
            kills += 1
            time.sleep(rnd.uniform(0.5, 3.0))  # down time (benchmark pacing, not synchronisation)
            victim.start()
            time.sleep(rnd.uniform(1.0, 4.0))
        t0 = time.monotonic()
        wait_for(whole, 300, "mesh whole again")
        heal = time.monotonic() - t0
        sent = received = 0
        for p in pingers:
            out, _ = p.communicate(timeout=duration + 30)
            m = re.search(r"(\d+) packets transmitted, (\d+) received", out.decode())
            if m:
                sent += int(m[1])
                received += int(m[2])
        return {
            "nodes": n,
            "churn_seconds": churn_seconds,
            "kills": kills,
            "ping_sent": sent,
            "ping_lost": sent - received,
            "loss_pct": round(100 * (sent - received) / max(sent, 1), 1),
            "whole_again_after_s": round(heal, 1),
        }


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=50000, help="flood datagrams per second (max 50000)")
    ap.add_argument("--seconds", type=float, default=15.0, help="iperf3 / flood duration per run")
    ap.add_argument("--after", type=float, default=15.0, help="watch window after each flood")
    ap.add_argument("--baseline", type=Path, help="a source tree (e.g. /work/main) to run interleaved")
    ap.add_argument("--kinds", default=",".join(f[0] for f in FLOODS), help="flood kinds, comma-separated")
    ap.add_argument(
        "--no-iperf",
        action="store_true",
        help="floods only, no stream: b's CPU per flood datagram it read (b_cpu_us_per_read)",
    )
    ap.add_argument(
        "--pin",
        action="store_true",
        help="the tunnel on CPU 0, the attacker on CPU 1 (the flood's sender off the tunnel's CPU)",
    )
    ap.add_argument("--churn-seconds", type=float, default=40.0)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--skip", action="append", default=[], choices=["flood", "replay", "churn"])
    ap.add_argument(
        "--only-core",
        action="store_true",
        help="only the CPU per forged handshake datagram in the core (no root, no sockets)",
    )
    ap.add_argument("--rounds", type=int, default=5, help="--only-core: alternating rounds per tree")
    ap.add_argument("--count", type=int, default=200000, help="--only-core: datagrams per measurement")
    ns = ap.parse_args()
    if ns.only_core:
        print(f"== core CPU per forged handshake datagram, {ns.count} datagrams at 50,000/s (virtual clock)")
        print(table(bench_core(ns.baseline, max(ns.rounds, 1), max(ns.count, 1000))), flush=True)
        return 0
    if os.geteuid() != 0:
        print("error: run as root (network namespaces)", file=sys.stderr)
        return 1
    if ns.pin:
        TUNNEL_CPU[:] = ["taskset", "-c", "0"]
        FLOOD_CPU[:] = ["taskset", "-c", "1"]
    rate = min(max(ns.rate, 1), 50000)
    seconds = min(max(ns.seconds, 1.0), 60.0)
    with tempfile.TemporaryDirectory(prefix="vc-bench-sec-") as d:
        tmp = Path(d)
        if "flood" not in ns.skip:
            print(f"== floods at up to {rate}/s, iperf3 a -> b in the tunnel, {seconds:.0f} s each")
            kinds = ns.kinds.split(",")
            rows = bench_flood(tmp, rate, seconds, ns.after, ns.baseline, kinds, ns.no_iperf)
            print(table(rows), flush=True)
        if "replay" not in ns.skip:
            print("\n== replayed DATA (real crypto cores, in-process)")
            print(table([bench_replay()]), flush=True)
        if "churn" not in ns.skip:
            print(
                f"\n== churn: {ns.nodes} nodes, random SIGKILL + restart, {ns.churn_seconds:.0f} s, ping mesh"
            )
            print(table([bench_churn(tmp, ns.nodes, min(ns.churn_seconds, 600.0))]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
