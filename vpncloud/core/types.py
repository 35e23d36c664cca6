"""Primitive types: payload addresses, claim ranges, socket addresses, modes (spec section 3).

Payload addresses are plain ``bytes`` (4 = IPv4, 6 = MAC, 8 = VLAN id + MAC, 16 = IPv6): the
original compares them by length and content, which is exactly ``bytes`` equality, and the hot path
uses them as dict keys without wrapping.

Socket addresses are ``(host, port)`` tuples. Inside the core every IPv4 address is kept in the
IPv4-mapped IPv6 form ``::ffff:a.b.c.d`` (the original's socket is always IPv6, and its tables are
keyed by mapped addresses); ``nice()`` turns them back for display.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from .errors import DecodeError

SocketAddr = tuple[str, int]

NODE_ID_BYTES = 16


class Mode(enum.Enum):
    NORMAL = "normal"
    HUB = "hub"
    SWITCH = "switch"
    ROUTER = "router"


class DeviceType(enum.Enum):
    TUN = "tun"
    TAP = "tap"


# --- payload addresses -------------------------------------------------------------------------


def address_to_str(addr: bytes) -> str:
    """Display form of a payload address, as the original prints it (IPv6 without ``::``)."""
    n = len(addr)
    if n == 4:
        return ".".join(str(b) for b in addr)
    if n == 6:
        return ":".join(f"{b:02x}" for b in addr)
    if n == 8:
        vlan = int.from_bytes(addr[:2], "big")
        return f"vlan{vlan}/" + ":".join(f"{b:02x}" for b in addr[2:])
    if n == 16:
        return ":".join(addr[i : i + 2].hex() for i in range(0, 16, 2))
    return addr.hex()


def parse_address(text: str) -> bytes:
    """Parse a payload address from config text: IPv4, then IPv6, then a MAC."""
    text = text.strip()
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        pass
    try:
        return ipaddress.IPv6Address(text).packed
    except ValueError:
        pass
    parts = text.split(":")
    if len(parts) == 6:
        try:
            mac = bytes(int(p, 16) for p in parts)
            if all(1 <= len(p) <= 2 for p in parts):
                return mac
        except ValueError:
            pass
    raise DecodeError(f"invalid address: {text!r}")


def encode_address(addr: bytes) -> bytes:
    if len(addr) > 16:
        raise DecodeError("address too long")
    return bytes((len(addr),)) + addr


def decode_address(buf: bytes, pos: int = 0) -> tuple[bytes, int]:
    """Read ``u8 len`` + ``len`` bytes at ``pos``; returns the address and the next position."""
    if pos >= len(buf):
        raise DecodeError("address too short")
    n = buf[pos]
    if n > 16:
        raise DecodeError("address too long")
    end = pos + 1 + n
    if end > len(buf):
        raise DecodeError("address too short")
    return bytes(buf[pos + 1 : end]), end


@dataclass(frozen=True, slots=True)
class Range:
    """A claim: base address and prefix length. Host bits of the base are kept as written."""

    base: bytes
    prefix_len: int

    @classmethod
    def parse(cls, text: str) -> Range:
        text = text.strip()
        if "/" not in text:
            raise DecodeError(f"Invalid subnet format: {text!r} (ADDRESS/PREFIX required)")
        addr, _, prefix = text.rpartition("/")
        try:
            prefix_len = int(prefix)
        except ValueError:
            raise DecodeError(f"Invalid subnet format: {text!r}") from None
        if not 0 <= prefix_len <= 255:
            raise DecodeError(f"Invalid prefix length in {text!r}")
        return cls(parse_address(addr), prefix_len)

    def encode(self) -> bytes:
        return encode_address(self.base) + bytes((self.prefix_len,))

    @classmethod
    def decode(cls, buf: bytes, pos: int = 0) -> tuple[Range, int]:
        base, pos = decode_address(buf, pos)
        if pos >= len(buf):
            raise DecodeError("range too short")
        return cls(base, buf[pos]), pos + 1

    def matches(self, addr: bytes) -> bool:
        if len(addr) != len(self.base):
            return False
        bits = len(addr) * 8
        if self.prefix_len > bits:
            return addr == self.base
        if self.prefix_len == 0:
            return True
        shift = bits - self.prefix_len
        return (int.from_bytes(addr, "big") >> shift) == (int.from_bytes(self.base, "big") >> shift)

    def __str__(self) -> str:
        return f"{address_to_str(self.base)}/{self.prefix_len}"


# --- socket addresses --------------------------------------------------------------------------


def host_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Canonical text of an IP address, with IPv4-mapped IPv6 written as ``::ffff:a.b.c.d``.

    Python 3.11's ``str(IPv6Address("::ffff:10.0.0.1"))`` gives ``::ffff:a00:1`` (3.13 changed it), which
    would make the same peer appear under two different keys; every core module goes through here.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        v4 = ip.ipv4_mapped
        if v4 is not None:
            return f"::ffff:{v4}"
    return str(ip)


def mapped(addr: SocketAddr) -> SocketAddr:
    """The IPv4-mapped IPv6 form used as key everywhere in the core (spec 3.4)."""
    host, port = addr[0], addr[1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise DecodeError(f"invalid IP address {host!r}") from None
    if ip.version == 4:
        return (f"::ffff:{ip}", port)
    return (host_text(ip), port)


def nice(addr: SocketAddr) -> SocketAddr:
    """Mapped IPv4 back to plain IPv4 for display, logs and hooks."""
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:") and "." in host:
        return (host[7:], port)
    return (host, port)


def format_sockaddr(addr: SocketAddr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_sockaddr(text: str) -> SocketAddr:
    """Parse ``1.2.3.4:5`` or ``[::1]:5`` (no name resolution)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise DecodeError(f"invalid socket address {text!r}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise DecodeError(f"invalid socket address {text!r}")
    try:
        ip = ipaddress.ip_address(host)
        port_num = int(port)
    except ValueError:
        raise DecodeError(f"invalid socket address {text!r}") from None
    if not 0 <= port_num <= 65535:
        raise DecodeError(f"invalid port in {text!r}")
    return (host_text(ip), port_num)


def parse_listen(text: str, default_port: int = 3210) -> SocketAddr:
    """The original's listen-address rules (spec 3.4): ``*:PORT``, ``IP:PORT``, ``PORT``, ``IP``."""
    text = str(text).strip()
    if text.startswith("*:"):
        return ("::", _port(text[2:], text))
    if text.isdigit():
        return ("::", _port(text, text))
    if ":" in text and (text.startswith("[") or text.count(":") == 1):
        return parse_sockaddr(text)
    try:
        return (host_text(ipaddress.ip_address(text)), default_port)
    except ValueError:
        raise DecodeError(f"invalid listen address {text!r}") from None


def _port(text: str, whole: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise DecodeError(f"invalid port in {whole!r}") from None
    if not 0 <= port <= 65535:
        raise DecodeError(f"invalid port in {whole!r}")
    return port


def sockaddr_entry(addr: SocketAddr) -> tuple[int, bytes]:
    """IP version and wire entry (packed address + u16 BE port) of a socket address.

    NODE_INFO address lists and beacons share this entry format (spec 9.1, 15.3).
    """
    host, port = addr[0], addr[1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise DecodeError(f"invalid IP address {host!r}") from None
    if not 0 <= port <= 0xFFFF:
        raise DecodeError(f"invalid port {port!r}")
    return ip.version, ip.packed + port.to_bytes(2, "big")


def sockaddr_packed(addr: SocketAddr) -> bytes:
    """16- or 4-byte packed form of the host part."""
    return ipaddress.ip_address(addr[0]).packed


def is_ipv4(addr: SocketAddr) -> bool:
    return "." in addr[0] and ":" not in addr[0]
