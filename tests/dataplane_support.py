"""Traffic endpoints for tests/test_dataplane_netns.py, run inside namespaces as separate processes.

    python dataplane_support.py tcp-server ADDR PORT OUTFILE          # receive until EOF, write sha256
    python dataplane_support.py tcp-client ADDR PORT NBYTES SEED        # send NBYTES of seeded data
    python dataplane_support.py udp-server ADDR PORT OUTFILE SECONDS   # collect datagrams, write JSON
    python dataplane_support.py udp-client ADDR PORT SEED               # single datagrams + UDP GSO sends

All data is a deterministic function of the seed, so the test can compute what must arrive.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import sys
import time

UDP_SIZES = [1, 2, 17, 100, 511, 1000, 1300, 1371]  # 1371 + 28 + 28 = 1427: the tunnel's MTU (IPv4)
GSO_SIZE = 1000
GSO_COUNT = 12


def tcp_data(nbytes: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(nbytes)


def udp_datagrams(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(n) for n in UDP_SIZES]


def gso_payload(seed: int) -> bytes:
    return random.Random(seed + 1).randbytes(GSO_SIZE * GSO_COUNT - 123)


def family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def main() -> None:
    cmd, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "tcp-server":
        srv = socket.socket(family(addr), socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, port))
        srv.listen(1)
        conn, _ = srv.accept()
        h = hashlib.sha256()
        total = 0
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            h.update(chunk)
            total += len(chunk)
        with open(sys.argv[4], "w") as fh:
            json.dump({"sha256": h.hexdigest(), "bytes": total}, fh)
    elif cmd == "tcp-client":
        data = tcp_data(int(sys.argv[4]), int(sys.argv[5]))
        deadline = time.monotonic() + 20
        while True:
            try:
                sock = socket.create_connection((addr, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        sock.settimeout(60)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
        sock.close()
    elif cmd == "udp-server":
        sock = socket.socket(family(addr), socket.SOCK_DGRAM)
        sock.bind((addr, port))
        sock.settimeout(0.2)
        # The caller starts the client once this line arrives, not after a guessed delay.
        print("ready", flush=True)
        got = []
        # Listen until argv[5] seconds pass without a datagram (the client pauses 0.2 s between
        # rounds), so a slow start on a loaded machine does not cut the last round off.
        idle = float(sys.argv[5])
        cap = time.monotonic() + 60
        quiet_until = time.monotonic() + 30
        while time.monotonic() < min(quiet_until, cap):
            try:
                data = sock.recv(65535)
            except TimeoutError:
                continue
            got.append(hashlib.sha256(data).hexdigest())
            quiet_until = time.monotonic() + idle
        with open(sys.argv[4], "w") as fh:
            json.dump(got, fh)
    elif cmd == "udp-client":
        seed = int(sys.argv[4])
        sock = socket.socket(family(addr), socket.SOCK_DGRAM)
        sock.connect((addr, port))
        for _ in range(3):  # three rounds: a lost datagram in one round is tolerated by the test
            for d in udp_datagrams(seed):
                sock.send(d)
                time.sleep(0.01)
            try:  # one UDP GSO send from the application: USO on the TUN, or segments
                sock.sendmsg([gso_payload(seed)], [(17, 103, GSO_SIZE.to_bytes(2, "little"))])
            except OSError:
                payload = gso_payload(seed)
                for i in range(0, len(payload), GSO_SIZE):
                    sock.send(payload[i : i + GSO_SIZE])
            time.sleep(0.2)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
