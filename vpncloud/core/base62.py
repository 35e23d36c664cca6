"""Base62 as VpnCloud uses it for keys and beacons (spec section 3.1).

The byte string is one big-endian integer written in base 62 without padding, so leading zero bytes
are lost: ``encode(b"\\x00") == ""``. ``decode`` returns the minimal big-endian byte string.
"""

from __future__ import annotations

from .errors import DecodeError

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}


def encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits: list[str] = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(ALPHABET[rest])
    return "".join(reversed(digits))


def decode(text: str) -> bytes:
    number = 0
    for char in text:
        value = _VALUE.get(char)
        if value is None:
            raise DecodeError(f"invalid base62 character {char!r}")
        number = number * 62 + value
    return number.to_bytes((number.bit_length() + 7) // 8, "big")


def decode_key(text: str, *, lenient: bool = True) -> bytes:
    """Decode a 32-byte key.

    The original rejects keys whose first byte is 0x00 because base62 dropped it (quirk 2, and then
    panics). We left-pad to 32 bytes instead: such a key is valid, only its text form is short.
    """
    raw = decode(text.strip())
    if len(raw) < 32 and lenient:
        raw = raw.rjust(32, b"\x00")
    if len(raw) != 32:
        raise DecodeError(f"key must decode to 32 bytes, got {len(raw)}")
    return raw
