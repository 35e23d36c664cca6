"""Source/destination extraction from IP packets (TUN) and Ethernet frames (TAP), spec 11.5.

Hot path: called for every packet in both directions, so it only slices (no struct, no objects).
"""

from __future__ import annotations

from .errors import DecodeError


def parse_packet(data: bytes) -> tuple[bytes, bytes]:
    """(src, dst) of an IPv4 (4-byte addresses) or IPv6 (16-byte addresses) packet."""
    if not data:
        raise DecodeError("Empty header")
    version = data[0] >> 4
    if version == 4:
        if len(data) < 20:
            raise DecodeError("Truncated IPv4 header")
        return bytes(data[12:16]), bytes(data[16:20])
    if version == 6:
        if len(data) < 40:
            raise DecodeError("Truncated IPv6 header")
        return bytes(data[8:24]), bytes(data[24:40])
    raise DecodeError("Invalid IP protocol version")


def parse_frame(data: bytes) -> tuple[bytes, bytes]:
    """(src, dst) of an Ethernet frame: 6-byte MACs, or 8-byte VLAN id + MAC for 802.1Q frames.

    Only the first tag counts (Q-in-Q inner tags and 0x88a8 are not looked at). Quirk 25.9 is
    replicated on purpose: the original meant VLAN 0 (priority tag) to mean "untagged" but its check
    never fires, so such frames get 8-byte addresses with VLAN 0. Doing the same keeps our address
    space identical to a 2.4.0 peer's in a mixed switch network.
    """
    if len(data) < 14:
        raise DecodeError("Frame is too short")
    if data[12] == 0x81 and data[13] == 0x00:
        if len(data) < 16:
            raise DecodeError("Vlan frame is too short")
        # VLAN id = TCI & 0x0fff (PCP and DEI dropped), big-endian, in front of each MAC
        vlan = bytes((data[14] & 0x0F, data[15]))
        return vlan + data[6:12], vlan + data[0:6]
    return bytes(data[6:12]), bytes(data[0:6])
