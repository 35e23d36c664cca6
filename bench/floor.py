#!/usr/bin/env python3
"""The least Python a super-packet tunnel (T2) can run: a reference for ``bench/dataplane.py``.

Not a VPN: no handshake, no peers table, no routing, no counters, no replay window, a fixed key,
one peer given on the command line. It keeps only what every T2 packet must pay for in Python on
this machine: a TUN read with offloads (64 KB super-packets), one AES-256-GCM call, cutting the
frame into slices with numpy and one UDP GSO send; on the other side one GRO read, joining the
slices, one AES-GCM call and one TUN write. Small packets (ACKs) go as one datagram each.

The subject ``floor`` of the benchmark runs it between the two namespaces, so the table shows how
far our daemon's T2 is from the least it could cost, in the same pass. Usage (inside a namespace)::

    python bench/floor.py 10.211.0.1/24 10.210.0.2
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vpncloud.daemon.device import Device
from vpncloud.daemon.loop import gso_max_size_for
from vpncloud.fastpath.superpacket import SLICE_HEADER, SLICE_MARK

PORT = 3210
MTU = 1427  # what our daemon and the original choose on a 1500-byte underlay
DATA_PER_SLICE = 1440 - SLICE_HEADER.size
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104


def main() -> None:
    ip, prefix = sys.argv[1].split("/")
    dev = Device.open("tun", "vbtun%d", offload=True)
    if not dev.vnet:
        raise SystemExit("floor: this kernel gives no TUN offloads")
    dev.set_mtu(MTU)
    dev.set_ip(ip, int(prefix))
    dev.set_gso_max_size(gso_max_size_for(MTU))
    tun = dev.fd
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", PORT))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE, as our daemon
    sock.setsockopt(socket.SOL_SOCKET, 32, 4 << 20)  # SO_SNDBUFFORCE
    sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    peer = (sys.argv[2], PORT)
    aead = AESGCM(b"floor-benchmark-fixed-key-32byte")
    seal, open_ = aead.encrypt, aead.decrypt
    indexes = np.arange(256, dtype=np.uint8)
    seg = SLICE_HEADER.size + DATA_PER_SLICE
    gso = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", seg))]
    nonce = 0

    def send(raw: bytes) -> None:
        nonlocal nonce
        nonce += 1
        frame = nonce.to_bytes(8, "big") + seal(nonce.to_bytes(12, "big"), raw, None)
        size = len(frame)
        if size <= DATA_PER_SLICE:
            sock.sendto(frame, peer)
            return
        count = -(-size // DATA_PER_SLICE)
        full = size // DATA_PER_SLICE
        out = np.empty(size + count * SLICE_HEADER.size, np.uint8)
        rows = out[: full * seg].reshape(full, seg)
        src = np.frombuffer(frame, np.uint8)
        rows[:, SLICE_HEADER.size :] = src[: full * DATA_PER_SLICE].reshape(full, DATA_PER_SLICE)
        header = np.frombuffer(SLICE_HEADER.pack(SLICE_MARK, nonce & 0xFFFFFFFF, 0, count), np.uint8)
        rows[:, : SLICE_HEADER.size] = header
        rows[:, 5] = indexes[:full]
        if full < count:
            tail = full * seg
            out[tail : tail + SLICE_HEADER.size] = header
            out[tail + 5] = full
            out[tail + SLICE_HEADER.size :] = src[full * DATA_PER_SLICE :]
        sock.sendmsg([out], gso, 0, peer)

    def deliver(frame: bytes | memoryview) -> None:
        counter = int.from_bytes(frame[:8], "big")
        with contextlib.suppress(Exception):  # a forged or cut frame: this is a benchmark, drop it
            os.write(tun, open_(counter.to_bytes(12, "big"), frame[8:], None))

    def on_socket() -> None:
        while True:
            try:
                data, anc, _flags, _addr = sock.recvmsg(65535, 64)
            except BlockingIOError:
                return
            size = len(data)
            for level, kind, value in anc:
                if level == SOL_UDP and kind == UDP_GRO:
                    size = int.from_bytes(value[:4], "little")
            if data[0] != SLICE_MARK:  # single frames: GRO may have merged several of one size
                for pos in range(0, len(data), size):
                    deliver(data[pos : pos + size])
                continue
            n = len(data)
            count = -(-n // size)
            full = n // size
            if data[6] != count:  # not exactly one message in order: the real daemon reassembles
                continue
            arr = np.frombuffer(data, np.uint8)
            body = np.empty(n - count * SLICE_HEADER.size, np.uint8)
            part = size - SLICE_HEADER.size
            body[: full * part].reshape(full, part)[:] = arr[: full * size].reshape(full, size)[
                :, SLICE_HEADER.size :
            ]
            body[full * part :] = arr[full * size + SLICE_HEADER.size :]
            deliver(memoryview(body))

    def on_device() -> None:
        for _ in range(64):
            try:
                raw = os.read(tun, 65600)
            except BlockingIOError:
                return
            send(raw)

    poll = select.epoll()
    poll.register(tun, select.EPOLLIN)
    poll.register(sock.fileno(), select.EPOLLIN)
    while True:
        for fd, _mask in poll.poll():
            if fd == tun:
                on_device()
            else:
                on_socket()


if __name__ == "__main__":
    main()
