"""Security benchmark (run as root; not a test): floods, replays, churn. Prints a table.

    .venv/bin/python bench/security.py [--rate 50000] [--seconds 8] [--churn-seconds 40] [--nodes 4]

1. Forged PING flood: two real daemons (a, b) in namespaces, iperf3 through the tunnel a -> b. An
   attacker namespace on the same LAN floods b's UDP port at up to ``--rate`` datagrams/s:
   * ``closed``: the same junk to a closed port of b: the cost of the flood itself on this machine
     (sender CPU, kernel), i.e. the control for the two real floods;
   * ``junk``: 0xFF + random bytes (random key hash: rejected before any signature check),
   * ``replay``: a genuine, validly signed PING (made with the mesh password) sent from 250 source
     addresses (per-source limit, then the global limit bound the signature checks).
   For the baseline and each flood: tunnel throughput, b's CPU (utime+stime of the daemon process over
   the interval), datagrams the attacker actually sent, and b's guard counters from ``status``.
2. Replayed DATA: the real crypto cores of two nodes (in-process, like the daemon's receive path): every
   DATA datagram a sent is replayed to b, (i) right away (inside the replay window of 1-2 ticks, where
   the original accepts duplicates) and (ii) after 3 ticks; fraction rejected.
3. Churn: ``--nodes`` daemons, a ping mesh between all tunnel addresses; for ``--churn-seconds`` a random
   node is killed (SIGKILL) and restarted every few seconds. Then: time until every pair pings again,
   ping packets sent/lost during the churn.

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

from vpncloud.daemon.control import ControlError, request  # noqa: E402
from vpncloud.lab.netns import Netns, Topology  # noqa: E402

PY = sys.executable
PASSWORD = "bench-security"
CLK = os.sysconf("SC_CLK_TCK")


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


def status(sock: str) -> dict[str, Any] | None:
    try:
        r = request(sock, timeout=2.0)
    except ControlError:
        return None
    return r.get("status") if r.get("ok") else None


class Daemon:
    def __init__(self, topo: Topology, ns: Netns, name: str, tmp: Path, ip: str, peers: list[str]) -> None:
        self.topo, self.ns, self.name, self.tmp, self.ip, self.peers = topo, ns, name, tmp, ip, peers
        self.sock = str(tmp / f"{name}.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [PY, "-m", "vpncloud", "--no-port-forwarding", "--control-socket", self.sock, "-p", PASSWORD,
                "--ip", f"{self.ip}/24", "--log-file", str(self.tmp / f"{self.name}.log")]  # fmt: skip
        for p in self.peers:
            args += ["-c", p]
        env = {k: v for k, v in os.environ.items() if k != "PASSWORD"}
        self.proc = self.topo.spawn(self.ns, args, env=env)
        wait_for(lambda: status(self.sock), 30, f"{self.name} control socket")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        # a killed node leaves its device behind in the namespace; the restart must create it anew
        for link in self.ns.links():
            if link.startswith("vpncloud"):
                self.ns.ip("link", "del", link, check=False)


# --- 1. flood -------------------------------------------------------------------------------------

FLOODER = textwrap.dedent("""
    import os, socket, sys, time
    mode, target, rate, seconds, ping_hex, nsrc = sys.argv[1:7]
    rate, seconds, nsrc = int(rate), float(seconds), int(nsrc)
    ping = bytes.fromhex(ping_hex)
    socks = []
    for i in range(nsrc):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"10.77.{1 + i // 250}.{1 + i % 250}", 0))
        s.setblocking(False)
        socks.append(s)
    dst = (target, 3299 if mode == "closed" else 3210)
    junk = [b"\\xff" + os.urandom(150) for _ in range(64)]
    sent, start, batch = 0, time.monotonic(), 200
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        due = int((now - start) * rate)
        if sent >= due:
            time.sleep(min(0.002, batch / rate))
            continue
        for i in range(min(batch, due - sent)):
            data = ping if mode == "replay" else junk[i & 63]
            try:
                socks[(sent + i) % nsrc].sendto(data, dst)
            except BlockingIOError:
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
    r = client.run(["iperf3", "-c", server_ip, "-t", str(seconds), "-J"], check=False, timeout=seconds + 30)
    data = json.loads(r.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6


def bench_flood(tmp: Path, rate: int, seconds: float) -> list[dict[str, Any]]:
    rows = []
    with Topology() as topo:
        a_ns = topo.node("a", "10.76.0.1/16")
        b_ns = topo.node("b", "10.76.0.2/16")
        x_ns = topo.node("x", "10.76.0.3/16")
        for i in range(250):
            x_ns.add_addr("eth0", f"10.77.{1 + i // 250}.{1 + i % 250}/16")
        b = Daemon(topo, b_ns, "b", tmp, "10.120.0.2", [])
        b.start()
        a = Daemon(topo, a_ns, "a", tmp, "10.120.0.1", ["10.76.0.2:3210"])
        a.start()
        wait_for(lambda: a_ns.ping("10.120.0.2"), 30, "tunnel a -> b")
        topo.spawn(b_ns, ["iperf3", "-s", "-B", "10.120.0.2"])
        time.sleep(0.5)  # let iperf3 bind (a benchmark, not a test)
        wait_for(lambda: b_ns.run(["ss", "-ltn"], check=False).stdout.count(":5201") > 0, 10, "iperf3 server")
        ping_hex = genuine_ping().hex()
        assert b.proc is not None
        for mode in ("baseline", "closed", "junk", "replay"):
            before_st = status(b.sock) or {}
            cpu0 = cpu_seconds(b.proc.pid)
            t0 = time.monotonic()
            flooder = None
            if mode != "baseline":
                nsrc = 250 if mode == "replay" else 1
                flooder = x_ns.popen(
                    [PY, "-c", FLOODER, mode, "10.76.0.2", str(rate), str(seconds + 1), ping_hex, str(nsrc)],
                    stdout=subprocess.PIPE,
                )
                topo.processes.append(flooder)
            mbit = iperf(a_ns, "10.120.0.2", seconds)
            cpu = (cpu_seconds(b.proc.pid) - cpu0) / (time.monotonic() - t0)
            sent = 0
            if flooder is not None:
                out, _ = flooder.communicate(timeout=30)
                sent = int(out.decode().strip() or 0)
            st = status(b.sock) or {}
            g0 = (before_st.get("security") or {}).get("handshake_guard") or {}
            g1 = (st.get("security") or {}).get("handshake_guard") or {}
            rows.append(
                {
                    "mode": mode,
                    "tunnel_mbit": round(mbit, 1),
                    "daemon_cpu_pct": round(100 * cpu, 1),
                    "flood_sent": sent,
                    "flood_rate": round(sent / (seconds + 1)),
                    "sig_checks_allowed": g1.get("allowed", 0) - g0.get("allowed", 0),
                    "dropped_source": g1.get("dropped_source", 0) - g0.get("dropped_source", 0),
                    "dropped_global": g1.get("dropped_global", 0) - g0.get("dropped_global", 0),
                    "b_still_has_peer": bool(st.get("peers")),
                }
            )
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
    ap.add_argument("--seconds", type=float, default=8.0, help="iperf3 / flood duration per run")
    ap.add_argument("--churn-seconds", type=float, default=40.0)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--skip", action="append", default=[], choices=["flood", "replay", "churn"])
    ns = ap.parse_args()
    if os.geteuid() != 0:
        print("error: run as root (network namespaces)", file=sys.stderr)
        return 1
    rate = min(max(ns.rate, 1), 50000)
    seconds = min(max(ns.seconds, 1.0), 60.0)
    with tempfile.TemporaryDirectory(prefix="vc-bench-sec-") as d:
        tmp = Path(d)
        if "flood" not in ns.skip:
            print(
                f"== forged PING flood at up to {rate}/s, iperf3 a -> b in the tunnel, {seconds:.0f} s each"
            )
            print(table(bench_flood(tmp, rate, seconds)), flush=True)
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
