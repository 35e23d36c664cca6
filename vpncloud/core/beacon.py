"""Beacons: short alphanumeric strings carrying an hour stamp and a few node addresses (spec 15).

The "encryption" is an obfuscation keyed by the beacon password with a 1-byte integrity check; it
protects against corruption, not against attackers. Encoding is deterministic given the addresses and
the hour (the seed is derived from the plaintext), which is what lets us reproduce captured beacons.

The hour stamp must come from the monotonic (uptime) clock like the original (quirk 25.3, spec 15.6):
the caller passes ``hour_stamp(time.monotonic())``.
"""

from __future__ import annotations

import hashlib
import ipaddress
from functools import lru_cache

from . import base62
from .errors import DecodeError
from .types import SocketAddr, host_text, sockaddr_entry

TYPE_BEGIN = 0
TYPE_END = 1
TYPE_DATA = 2
TYPE_SEED = 3

#: How many hours a loaded beacon may be old (or young) for the node to accept it (spec 15.5).
DEFAULT_TTL_HOURS = 50

#: Longest data part we try to decode (~760 bytes, 40 entries; a 2.4.0 beacon holds at most 3).
#: Base62 decoding is quadratic, and a beacon file or command output is untrusted input that must
#: not stall the event loop.
MAX_PIECE_CHARS = 1024

_MARKER_LEN = 5
_BLOCK = 16


def hour_stamp(now_seconds: float) -> int:
    """The u16 hour stamp of a (monotonic) time in seconds."""
    return (int(now_seconds) // 3600) % 65536


@lru_cache(maxsize=64)
def _key(kind: int, seed: int, index: int, password: str) -> bytes:
    # SHA-512([type, seed, iter] || password); iter is one byte in the original (u8 counter)
    return hashlib.sha512(bytes((kind, seed, index & 0xFF)) + password.encode()).digest()


def markers(password: str) -> tuple[str, str]:
    """Begin and end markers: the first 5 base62 characters of K(BEGIN,0,0) and K(END,0,0)."""
    return (
        base62.encode(_key(TYPE_BEGIN, 0, 0, password))[:_MARKER_LEN],
        base62.encode(_key(TYPE_END, 0, 0, password))[:_MARKER_LEN],
    )


def _mask(data: bytes, seed: int, password: str) -> bytes:
    out = bytearray(data)
    for block in range((len(out) + _BLOCK - 1) // _BLOCK):
        stream = _key(TYPE_DATA, seed, block, password)
        base = block * _BLOCK
        for i in range(min(_BLOCK, len(out) - base)):
            out[base + i] ^= stream[i]
    return bytes(out)


def encode_beacon(addrs: list[SocketAddr], password: str, hour: int) -> str:
    """Encode ``addrs`` (IPv4 first as 6-byte entries, IPv6 incl. mapped as 18-byte entries).

    The whole list is encoded; choosing up to 3 addresses is the caller's business. More than 255 plain
    IPv4 addresses do not fit the count byte and raise :class:`DecodeError`, as do non-IP hosts.

    About 1 in 256 encodings starts with a 0x00 byte, which base62 drops, and the original cannot
    decode such a beacon (spec 15.4, quirk). Ours then tries the other rotations of the list and
    finally repeats the first entry (harmless: a node dials an address once), so the beacon stays
    readable by original nodes; only a beacon with no address at all can still come out short.
    """
    entries = [sockaddr_entry(addr) for addr in addrs]
    candidates = [entries[i:] + entries[:i] for i in range(max(1, len(entries)))]
    if entries:
        candidates.append([entries[0], *entries])
    data = b""
    for candidate in candidates:
        data = _encode_entries(candidate, password, hour)
        if data[0]:
            break
    begin, end = markers(password)
    return begin + base62.encode(data) + end


def _encode_entries(entries: list[tuple[int, bytes]], password: str, hour: int) -> bytes:
    v4 = b"".join(entry for version, entry in entries if version == 4)
    v6 = b"".join(entry for version, entry in entries if version != 4)
    count4 = len(v4) // 6
    if count4 > 255:
        raise DecodeError("too many IPv4 addresses for a beacon")
    plain = (hour & 0xFFFF).to_bytes(2, "big") + bytes((count4,)) + v4 + v6
    seed = hashlib.sha512(plain).digest()[0]
    return _mask(plain, seed, password) + bytes((seed ^ _key(TYPE_SEED, 0, 0, password)[0],))


def _decode_piece(text: str, password: str, ttl_hours: int | None, now_hour: int) -> list[SocketAddr]:
    if len(text) > MAX_PIECE_CHARS:
        return []
    try:
        data = base62.decode(text)
    except DecodeError:
        return []
    found = _decode_data(data, password, ttl_hours, now_hour)
    if found is None:
        # a beacon whose first byte was 0x00 lost it in base62 (the original's encoder, or our
        # empty ones): with the byte put back it decodes; the original skips such beacons
        found = _decode_data(b"\x00" + data, password, ttl_hours, now_hour)
    return found or []


def _decode_data(data: bytes, password: str, ttl_hours: int | None, now_hour: int) -> list[SocketAddr] | None:
    """The addresses of one decoded piece; None if it is not a valid beacon."""
    if len(data) < 4:
        return None
    seed = data[-1] ^ _key(TYPE_SEED, 0, 0, password)[0]
    plain = _mask(data[:-1], seed, password)
    if hashlib.sha512(plain).digest()[0] != seed:
        return None
    if ttl_hours is not None:
        then = int.from_bytes(plain[:2], "big")
        now = now_hour & 0xFFFF
        if (now - then) % 65536 > ttl_hours and (then - now) % 65536 > ttl_hours:
            return None
    count4 = plain[2]
    rest = len(plain) - 3
    if count4 * 6 > rest or (rest - count4 * 6) % 18:
        return None
    addrs: list[SocketAddr] = []
    pos = 3
    for _ in range(count4):
        addrs.append(
            (
                str(ipaddress.IPv4Address(plain[pos : pos + 4])),
                int.from_bytes(plain[pos + 4 : pos + 6], "big"),
            )
        )
        pos += 6
    while pos < len(plain):
        ip6 = ipaddress.IPv6Address(plain[pos : pos + 16])
        addrs.append((host_text(ip6), int.from_bytes(plain[pos + 16 : pos + 18], "big")))
        pos += 18
    return addrs


def decode_beacon(text: str, password: str, ttl_hours: int | None, now_hour: int) -> list[SocketAddr]:
    """All addresses of all valid beacons found in ``text`` (junk around and inside is ignored).

    Invalid pieces are skipped silently, as in the original; this never raises on bad text. IPv4 entries
    come back as plain IPv4 tuples, IPv6 ones (incl. mapped) as IPv6 text tuples.
    """
    clean = "".join(c for c in text if c.isascii() and c.isalnum())
    begin, end = markers(password)
    addrs: list[SocketAddr] = []
    pos = 0
    stop = -1
    while True:
        found = clean.find(begin, pos)
        if found < 0:
            break
        start = found + _MARKER_LEN
        # the original searches the end marker from the begin marker's position, not from start.
        # The previous hit is still the first one at/after ``found`` if it lies there, which keeps
        # a text full of begin markers linear instead of quadratic.
        if stop < found:
            stop = clean.find(end, found)
            if stop < 0:
                break
        if start <= stop <= start + MAX_PIECE_CHARS:
            addrs.extend(_decode_piece(clean[start:stop], password, ttl_hours, now_hour))
        pos = start
    return addrs
