"""Framing of the WebSocket proxy (spec 16), shared by the node's client socket
(:mod:`vpncloud.daemon.proxy_client`) and the ``vpncloud ws-proxy`` server (:mod:`vpncloud.proxy`):
every binary WebSocket message starts with an 18-byte socket address (16-byte IPv6 address, IPv4 as
``::ffff:a.b.c.d``, then the port as u16 big endian). Bytes only, no I/O.
"""

from __future__ import annotations

import ipaddress
import struct

from .types import SocketAddr

__all__ = ["ADDR_LEN", "DEFAULT_PROXY_PORT", "FramingError", "decode_addr", "encode_addr", "split_message"]

#: Length of the address prefix of every proxy message (spec 16.1).
ADDR_LEN = 18
#: Default port of ``ws-proxy -l IP`` (spec 3.4 rule 4).
DEFAULT_PROXY_PORT = 8080


class FramingError(ValueError):
    """A proxy message too short to carry an address, or an address that cannot be encoded."""


def encode_addr(addr: SocketAddr) -> bytes:
    """18-byte wire form of ``(host, port)``; IPv4 hosts are written IPv4-mapped."""
    host, port = addr[0], addr[1]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise FramingError(f"not an IP address: {host!r}") from None
    # IPv4 goes on the wire IPv4-mapped (::ffff:a.b.c.d), like the original's SocketAddr encoding
    packed = (b"\0" * 10 + b"\xff\xff" + ip.packed) if isinstance(ip, ipaddress.IPv4Address) else ip.packed
    if not 0 <= int(port) <= 0xFFFF:
        raise FramingError(f"port out of range: {port}")
    return packed + struct.pack(">H", int(port))


def decode_addr(data: bytes) -> SocketAddr:
    """The address at the start of ``data`` as a mapped-style ``(host, port)`` (IPv4 -> ``::ffff:...``)."""
    if len(data) < ADDR_LEN:
        raise FramingError(f"proxy message too short for an address ({len(data)} bytes)")
    ip = ipaddress.IPv6Address(bytes(data[:16]))
    (port,) = struct.unpack(">H", data[16:ADDR_LEN])
    v4 = ip.ipv4_mapped
    host = f"::ffff:{v4}" if v4 is not None else str(ip)
    return (host, port)


def split_message(data: bytes) -> tuple[SocketAddr, bytes]:
    """``[18-byte address][payload]`` -> ``(address, payload)``; :class:`FramingError` if too short."""
    return decode_addr(data), bytes(data[ADDR_LEN:])
