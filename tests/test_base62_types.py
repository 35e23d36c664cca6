"""Base62 (spec 3.1 / 22.1), payload addresses and ranges (3.2, 3.3 / 22.2), socket addresses (3.4)."""

from __future__ import annotations

import pytest

from vpncloud.core import base62
from vpncloud.core.errors import DecodeError
from vpncloud.core.types import (
    Range,
    address_to_str,
    decode_address,
    encode_address,
    format_sockaddr,
    is_ipv4,
    mapped,
    nice,
    parse_address,
    parse_listen,
    parse_sockaddr,
)

# --- base62 (22.1) ---------------------------------------------------------------------------------

ENCODE_VECTORS = [
    (b"\x00", ""),
    (bytes([61]), "z"),
    (bytes([62]), "10"),
    (bytes([1, 0]), "48"),
    (b"Test", "1Xp7Ke"),
]
DECODE_VECTORS = [
    ("", b""),
    ("z", bytes([61])),
    ("10", bytes([62])),
    ("48", bytes([1, 0])),
    ("1Xp7Ke", b"Test"),
]


@pytest.mark.parametrize(("raw", "text"), ENCODE_VECTORS)
def test_base62_encode_vectors(raw: bytes, text: str) -> None:
    assert base62.encode(raw) == text


@pytest.mark.parametrize(("text", "raw"), DECODE_VECTORS)
def test_base62_decode_vectors(text: str, raw: bytes) -> None:
    assert base62.decode(text) == raw


@pytest.mark.parametrize("bad", ["-", "ab+c", "ü", " 10", "1 0"])
def test_base62_rejects_foreign_characters(bad: str) -> None:
    with pytest.raises(DecodeError):
        base62.decode(bad)


def test_base62_leading_zero_bytes_are_lost() -> None:
    # the quirk the key and beacon code has to live with (25.2)
    assert base62.decode(base62.encode(b"\x00\x00\x01\x02")) == b"\x01\x02"


def test_decode_key_left_pads_short_keys_and_rejects_long_ones() -> None:
    seed = b"\x00" + bytes(range(1, 32))
    text = base62.encode(seed)
    assert base62.decode_key(text) == seed
    with pytest.raises(DecodeError):
        base62.decode_key(text, lenient=False)
    with pytest.raises(DecodeError):
        base62.decode_key(base62.encode(b"\x01" * 33))


# --- addresses (3.2 / 22.2) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (bytes([120, 45, 22, 5]), "120.45.22.5"),
        (bytes.fromhex("782d16050102"), "78:2d:16:05:01:02"),
        (bytes.fromhex("0338782d16050102"), "vlan824/78:2d:16:05:01:02"),
        (bytes(range(16)), "0001:0203:0405:0607:0809:0a0b:0c0d:0e0f"),
        (bytes([1, 2]), "0102"),
    ],
)
def test_address_display(raw: bytes, text: str) -> None:
    assert address_to_str(raw) == text


@pytest.mark.parametrize(
    ("text", "raw"),
    [
        ("120.45.22.5", bytes([120, 45, 22, 5])),
        ("78:2d:16:05:01:02", bytes.fromhex("782d16050102")),
        ("0001:0203:0405:0607:0809:0a0b:0c0d:0e0f", bytes(range(16))),
        ("fd00::1", bytes.fromhex("fd000000000000000000000000000001")),
    ],
)
def test_address_parse(text: str, raw: bytes) -> None:
    assert parse_address(text) == raw


@pytest.mark.parametrize("bad", ["", "1.2.3", "78:2d:16:05:01", "78:2d:16:05:01:1234", "zz:2d:16:05:01:02"])
def test_address_parse_errors(bad: str) -> None:
    with pytest.raises(DecodeError):
        parse_address(bad)


def test_address_wire_encoding() -> None:
    assert encode_address(parse_address("120.45.22.5")) == bytes.fromhex("04782d1605")
    assert encode_address(parse_address("78:2d:16:05:01:02")) == bytes.fromhex("06782d16050102")
    assert decode_address(bytes.fromhex("04782d1605")) == (bytes([120, 45, 22, 5]), 5)
    with pytest.raises(DecodeError):
        encode_address(bytes(17))


@pytest.mark.parametrize("bad", [bytes([100]) + bytes(100), bytes([5, 1, 2, 3]), bytes([4]), b""])
def test_address_wire_decode_errors(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_address(bad)


def test_address_equality_by_length_and_content() -> None:
    assert bytes([1, 2, 3, 4]) == bytes([1, 2, 3, 4])
    assert bytes([1, 2, 3, 4]) != bytes([1, 2, 3, 5])
    assert bytes([1, 2, 3, 4])[:3] == bytes([1, 2, 3, 5])[:3]
    assert bytes([1, 2, 3]) != bytes([1, 2, 3, 4])


# --- ranges (3.3 / 22.2) ---------------------------------------------------------------------------


def test_range_encoding_vector() -> None:
    claim = Range.parse("0.1.2.3/24")
    assert claim.encode() == bytes.fromhex("040001020318")
    assert Range.decode(claim.encode()) == (claim, 6)
    assert str(claim) == "0.1.2.3/24"


@pytest.mark.parametrize("bad", [bytes.fromhex("0400010203"), bytes([17]) + bytes(18)])
def test_range_decode_errors(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        Range.decode(bad)


@pytest.mark.parametrize("bad", ["10.0.0.1", "10.0.0.0/x", "10.0.0.0/300", "nonsense/8"])
def test_range_parse_errors(bad: str) -> None:
    with pytest.raises(DecodeError):
        Range.parse(bad)


@pytest.mark.parametrize(
    ("claim", "addr", "expected"),
    [
        ("10.1.2.3/24", "10.1.2.200", True),  # host bits of the base are irrelevant
        ("10.1.2.0/24", "10.1.3.1", False),
        ("10.1.2.0/23", "10.1.3.1", True),
        ("0.0.0.0/0", "192.168.7.7", True),
        ("10.1.2.3/40", "10.1.2.3", True),  # prefix > bits: only the identical address
        ("10.1.2.3/40", "10.1.2.4", False),
        ("fd00::/64", "fd00::1", True),
        ("fd00::/64", "10.0.0.1", False),  # different length never matches
        ("0.0.0.0/0", "fd00::1", False),
    ],
)
def test_range_matches(claim: str, addr: str, expected: bool) -> None:
    assert Range.parse(claim).matches(parse_address(addr)) is expected


# --- socket addresses (3.4) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*:3210", ("::", 3210)),
        ("1.2.3.4:3211", ("1.2.3.4", 3211)),
        ("[::1]:3212", ("::1", 3212)),
        ("3213", ("::", 3213)),
        ("1.2.3.4", ("1.2.3.4", 3210)),
        ("fd00::5", ("fd00::5", 3210)),
        ("[::ffff:1.2.3.4]:5", ("::ffff:1.2.3.4", 5)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


def test_parse_listen_default_port() -> None:
    assert parse_listen("10.0.0.1", default_port=8080) == ("10.0.0.1", 8080)


@pytest.mark.parametrize("bad", ["*:x", "*:70000", "99999", "host.example:1", "1.2.3.4:x", "[::1]3", "abc"])
def test_parse_listen_errors(bad: str) -> None:
    with pytest.raises(DecodeError):
        parse_listen(bad)


def test_mapped_and_nice() -> None:
    assert mapped(("10.0.0.1", 3210)) == ("::ffff:10.0.0.1", 3210)
    # already-mapped input keeps the dotted form (Python 3.11 would print "::ffff:a00:1": fixed bug)
    assert mapped(("::ffff:10.0.0.1", 3210)) == ("::ffff:10.0.0.1", 3210)
    assert mapped(("::ffff:a00:1", 3210)) == ("::ffff:10.0.0.1", 3210)
    assert mapped(("FD00:0::1", 1)) == ("fd00::1", 1)
    assert nice(("::ffff:10.0.0.1", 3210)) == ("10.0.0.1", 3210)
    assert nice(("fd00::1", 1)) == ("fd00::1", 1)
    with pytest.raises(DecodeError):
        mapped(("not-an-ip", 1))


def test_sockaddr_text_forms() -> None:
    assert format_sockaddr(("10.0.0.1", 1)) == "10.0.0.1:1"
    assert format_sockaddr(("fd00::1", 1)) == "[fd00::1]:1"
    assert parse_sockaddr("[::ffff:10.0.0.1]:7") == ("::ffff:10.0.0.1", 7)
    assert is_ipv4(("10.0.0.1", 1)) and not is_ipv4(("::ffff:10.0.0.1", 1))
