"""Trains of TCP segments as the GRO merge kernel (coalesce_rows) gets them, and the ways one row
can be broken: for the tests of the kernels and their atheris target (fuzz/kernels.py)."""

from __future__ import annotations

import struct

from vpncloud.fastpath.gro import PROTO_TCP


def train_rows(
    v6: bool, count: int, mss: int, tail: int, options: bytes, seq: int, psh_last: bool
) -> list[bytearray]:
    """The segments of one TSO super-packet as GRO delivers them (checksums are not looked at)."""
    iphl = 40 if v6 else 20
    doff = (20 + len(options)) // 4
    out = []
    for i in range(count):
        size = tail if tail and i == count - 1 else mss
        flags = 0x18 if psh_last and i == count - 1 else 0x10
        tcp = struct.pack(
            "!HHLLBBHHH", 40000, 5201, (seq + i * mss) & 0xFFFFFFFF, 555, doff << 4, flags, 500, 0, 0
        )
        length = iphl + len(tcp) + len(options) + size
        if v6:
            ip = struct.pack("!IHBB", 0x60000000, length - 40, PROTO_TCP, 64) + bytes(range(32))
        else:
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, length, 100 + i, 0x4000, 64, PROTO_TCP, 0, b"\n\0\0\1", b"\n\0\0\2"
            )
        out.append(bytearray(ip + tcp + options + bytes((i * 7 + j) & 0xFF for j in range(size))))
    return out


def layout(packets: list[bytearray], extra: int) -> tuple[bytearray, int, list[int]]:
    stride = 1 + max(map(len, packets)) + extra
    buf = bytearray(b"\xa5" * (stride * len(packets)))
    for i, p in enumerate(packets):
        buf[i * stride + 1 : i * stride + 1 + len(p)] = p
    return buf, stride, [len(p) for p in packets]


#: What can be wrong with a row of a train: its length, an IPv4 option, its flags, its sequence
#: number (out of order), its flow (ports), any one header byte, the version, its end.
TWISTS = ["length", "ipopt", "flags", "seq", "flow", "byte", "version", "truncate"]


def twist(packets: list[bytearray], v6: bool, kind: str, at: int, value: int) -> None:
    """Break row ``at`` (modulo the count) the ``kind`` way, ``value`` (0..255) says how."""
    p = packets[at % len(packets)]
    if len(p) < 60:  # cut short by an earlier twist: nothing left to twist
        return
    iphl = 40 if v6 else 20
    if kind == "length":
        p[2 + 2 * v6] ^= 1 << (value % 8)
    elif kind == "ipopt":
        p[0] = 0x46
    elif kind == "flags":
        p[iphl + 13] = value
    elif kind == "seq":
        p[iphl + 4 + value % 4] ^= value | 1
    elif kind == "flow":
        p[iphl + 1] = value
    elif kind == "byte":
        p[value % len(p)] ^= 0x10
    elif kind == "version":
        p[0] = value
    else:
        del p[value % len(p) :]
