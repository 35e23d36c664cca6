"""(src, dst) extraction from IP packets and Ethernet frames (spec 11.5 / 22.6)."""

from __future__ import annotations

import pytest

from vpncloud.core.errors import DecodeError
from vpncloud.core.payload import parse_frame, parse_packet
from vpncloud.core.types import address_to_str

DST_MAC = bytes.fromhex("060504030201")
SRC_MAC = bytes.fromhex("010203040506")


def test_ethernet_without_vlan() -> None:
    frame = DST_MAC + SRC_MAC + b"\x01\x02" + b"payload"
    assert parse_frame(frame) == (SRC_MAC, DST_MAC)


def test_ethernet_with_vlan() -> None:
    frame = DST_MAC + SRC_MAC + b"\x81\x00" + b"\x04\xd2" + b"payload"
    src, dst = parse_frame(frame)
    assert src == bytes.fromhex("04d2") + SRC_MAC
    assert dst == bytes.fromhex("04d2") + DST_MAC
    assert address_to_str(src) == "vlan1234/01:02:03:04:05:06"


def test_vlan_pcp_and_dei_bits_are_dropped() -> None:
    frame = DST_MAC + SRC_MAC + b"\x81\x00" + b"\xf4\xd2"
    assert parse_frame(frame)[0][:2] == b"\x04\xd2"


def test_vlan_zero_keeps_the_tag_quirk() -> None:
    # quirk 25.9: priority-tagged frames are NOT treated as untagged
    frame = DST_MAC + SRC_MAC + b"\x81\x00" + b"\x20\x00"
    assert parse_frame(frame) == (b"\x00\x00" + SRC_MAC, b"\x00\x00" + DST_MAC)


def test_only_8100_is_a_vlan_tag() -> None:
    frame = DST_MAC + SRC_MAC + b"\x88\xa8" + b"\x04\xd2"
    assert parse_frame(frame) == (SRC_MAC, DST_MAC)


def test_20_byte_plain_frame_is_valid() -> None:
    assert parse_frame(DST_MAC + SRC_MAC + b"\x08\x00" + bytes(6)) == (SRC_MAC, DST_MAC)


@pytest.mark.parametrize(
    "frame",
    [b"", bytes(13), DST_MAC + SRC_MAC + b"\x81\x00", DST_MAC + SRC_MAC + b"\x81\x00\x01"],
)
def test_frame_errors(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_frame(frame)


def test_ipv4() -> None:
    packet = bytearray(20)
    packet[0] = 0x40
    packet[12:16] = bytes([192, 168, 1, 1])
    packet[16:20] = bytes([192, 168, 1, 2])
    assert parse_packet(bytes(packet)) == (bytes([192, 168, 1, 1]), bytes([192, 168, 1, 2]))
    with pytest.raises(DecodeError):
        parse_packet(bytes(packet[:19]))


def test_ipv6() -> None:
    src = bytes.fromhex("01020304050607080900010203040506")
    dst = bytes.fromhex("00090807060504030201060504030201")
    packet = b"\x60" + bytes(7) + src + dst
    assert len(packet) == 40
    assert parse_packet(packet) == (src, dst)
    with pytest.raises(DecodeError):
        parse_packet(packet[:39])


def test_ipv4_ignores_ihl_and_trailing_bytes() -> None:
    packet = b"\x45" + bytes(11) + bytes([10, 0, 0, 1]) + bytes([10, 0, 0, 2]) + b"rest of the packet"
    assert parse_packet(packet) == (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))


@pytest.mark.parametrize("packet", [b"", b"\x20" + bytes(39), b"\x50" + bytes(60), b"\x00" * 40])
def test_packet_errors(packet: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_packet(packet)


def test_memoryview_input_gives_bytes() -> None:
    frame = memoryview(DST_MAC + SRC_MAC + b"\x81\x00\x00\x05")
    src, dst = parse_frame(frame)  # type: ignore[arg-type]
    assert type(src) is bytes and type(dst) is bytes
    packet = memoryview(b"\x45" + bytes(19))
    assert all(type(a) is bytes for a in parse_packet(packet))  # type: ignore[arg-type]
