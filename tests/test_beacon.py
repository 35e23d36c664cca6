"""Beacons (spec 15, vectors 22.8) and the real beacon file written by the 2.4.0 binary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vpncloud.core import base62, beacon
from vpncloud.core.beacon import (
    DEFAULT_TTL_HOURS,
    decode_beacon,
    encode_beacon,
    hour_stamp,
    markers,
)

VECTORS = Path(__file__).parent / "fixtures" / "vectors"
PW = "mysecretkey"
HOUR = 2000
TWO = [("1.2.3.4", 5678), ("6.6.6.6", 53)]
B1 = "WsHI31EWDMBYxvITiILIrm2k9gEik22E"
B2 = "WsHI3GXKaXCveo6uejmZizZ72kR6Y0L9T7h49TXONp1ugfKvvvEik22E"
B3 = "WsHI32gm9eMSHP3Lm1GXcdP7rD3ik22E"


def test_hour_stamp() -> None:
    assert hour_stamp(2000 * 3600) == 2000
    assert hour_stamp(2000 * 3600 + 3599.9) == 2000
    assert hour_stamp(4612.727) == 1
    assert hour_stamp(65536 * 3600 + 7200) == 2  # u16 wrap


def test_markers() -> None:
    assert markers(PW) == ("WsHI3", "ik22E")
    assert markers("") == ("PNehe", "RFu5I")
    assert markers("test") == ("BmPKg", "bRv4j")


@pytest.mark.parametrize(
    ("addrs", "beacon"),
    [
        (TWO, B1),
        ([*TWO, ("::1", 5678)], B2),
        ([("1.2.3.4", 5678), ("6.6.6.6", 54)], B3),
    ],
)
def test_encode_vectors(addrs: list[tuple[str, int]], beacon: str) -> None:
    assert encode_beacon(addrs, PW, HOUR) == beacon
    assert decode_beacon(beacon, PW, None, HOUR) == addrs


def test_ipv4_entries_come_first_whatever_the_input_order() -> None:
    assert encode_beacon([("::1", 5678), *TWO], PW, HOUR) == B2


@pytest.mark.parametrize(
    "text",
    [
        "WsHI3-1E.WD:MB Yx\tvI\nTi(IL)Ir[m2]k9ügEäik22E",
        "W -, \nsH--I31EWDMBYxvITiILIrm2k9gEi(k)2ÖÄÜ\n2E",
        f"Hello World: {B1}! End of the World",
    ],
)
def test_junk_is_ignored(text: str) -> None:
    assert decode_beacon(text, PW, None, HOUR) == TWO


def test_two_beacons_in_one_string() -> None:
    text = "WsHI31HVpqxFNMNSPrvik22E WsHI34yOBcZIulKdtn2ik22E"
    assert decode_beacon(text, PW, None, HOUR) == TWO
    assert encode_beacon(TWO[:1], PW, HOUR) + " " + encode_beacon(TWO[1:], PW, HOUR) == text


@pytest.mark.parametrize("now", [2000, 2100, 2005, 1995])
def test_without_ttl_always_accepted(now: int) -> None:
    assert decode_beacon(B1, PW, None, now) == TWO


@pytest.mark.parametrize(
    ("now", "accepted"), [(2000, True), (1995, True), (2005, True), (2100, False), (1900, False)]
)
def test_ttl_24_hours(now: int, accepted: bool) -> None:
    assert decode_beacon(B1, PW, 24, now) == (TWO if accepted else [])


def test_ttl_wraps_around_u16() -> None:
    beacon = encode_beacon(TWO, PW, 65530)
    assert decode_beacon(beacon, PW, 24, 10) == TWO  # 16 hours later, across the wrap
    assert decode_beacon(beacon, PW, 24, 65536 + 10) == TWO


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("", 0),
        ("WsHI3ik22E", 0),
        ("WsHI3--", 0),
        ("--ik22E", 0),
        ("WsHI32EWDMBYxvITiILIrm2k9gEik22E", 0),
        ("ik22EWsHI31EWDMBYxvITiILIrm2k9gEik22EWsHI3", 2),
        ("WsHI3WsHI31EWDMBYxvITiILIrm2k9gEik22Eik22E", 2),
    ],
)
def test_invalid_and_odd_inputs(text: str, count: int) -> None:
    assert len(decode_beacon(text, PW, None, HOUR)) == count


def test_wrong_password_finds_nothing() -> None:
    assert decode_beacon(B1, "other", None, HOUR) == []


@pytest.mark.timeout(10)
def test_hostile_inputs_are_handled_in_linear_time() -> None:
    assert decode_beacon("WsHI3" + "z" * 200_000 + "ik22E", PW, None, HOUR) == []
    assert decode_beacon("WsHI3" * 200_000 + "ik22E", PW, None, HOUR) == []
    assert decode_beacon("WsHI3" * 100_000 + B1, PW, None, HOUR) == TWO


def test_ipv6_and_mapped_entries() -> None:
    addrs = [("10.0.0.1", 1), ("::ffff:10.0.0.1", 2), ("fd00::1", 3)]
    for hour in range(0, 24):
        beacon = encode_beacon(addrs, "pw", hour)
        assert decode_beacon(beacon, "pw", DEFAULT_TTL_HOURS, hour) == addrs


def test_real_beacon_file_from_the_binary() -> None:
    text = (VECTORS / "beacon.node1.beacon.txt").read_text()
    assert text.endswith("\n") and len(text) == 49
    expected = [("10.240.0.1", 3210), ("::ffff:10.240.0.1", 3210)]
    assert decode_beacon(text, "test", DEFAULT_TTL_HOURS, 1) == expected
    assert encode_beacon(expected, "test", 1) + "\n" == text
    assert decode_beacon(text, "test", DEFAULT_TTL_HOURS, 1 + 51) == []


def test_beacon_json_snapshots() -> None:
    doc = json.loads((VECTORS / "beacon.json").read_text())
    assert doc["beacon_files"]
    for snap in doc["beacon_files"]:
        hour = hour_stamp(snap["monotonic_coarse_s"])
        assert hour == snap["expected_hour_stamp"]
        got = decode_beacon(snap["content"], "test", DEFAULT_TTL_HOURS, hour)
        want = [a for piece in snap["decoded"] for a in piece["decoded"]["addrs"]]
        assert [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in got] == want
        assert encode_beacon(got, "test", hour) == snap["content"]


def test_encode_rejects_non_ip_hosts() -> None:
    from vpncloud.core.errors import DecodeError

    with pytest.raises(DecodeError):
        encode_beacon([("example.com", 1)], PW, HOUR)


def _first_hour_with_a_lost_byte(addrs: list[tuple[str, int]], password: str) -> int:
    """An hour stamp for which the plain encoding of ``addrs`` starts with 0x00 (about 1 in 256)."""
    entries = [beacon.sockaddr_entry(a) for a in addrs]
    return next(h for h in range(65536) if beacon._encode_entries(entries, password, h)[0] == 0)


@pytest.mark.parametrize(
    "addrs",
    [
        [("10.243.0.9", 3210)],
        [("::ffff:10.243.0.9", 3210)],
        [("192.168.1.1", 3210), ("fd00::1", 3211), ("10.0.0.1", 3212)],
    ],
)
def test_beacons_avoid_and_survive_a_lost_leading_byte(addrs: list[tuple[str, int]]) -> None:
    """Spec 15.4 quirk: base62 drops a leading 0x00, and the original cannot decode such a beacon.
    Ours encodes those inputs differently (rotated, or the first entry repeated) so that the
    original can read them, and decodes the original's short form by putting the byte back."""
    password = "mysecretkey"
    hour = _first_hour_with_a_lost_byte(addrs, password)
    entries = [beacon.sockaddr_entry(a) for a in addrs]
    want = set(beacon.decode_beacon(beacon.encode_beacon(addrs, password, hour ^ 1), password, None, 0))
    assert want  # a neighbouring hour encodes plainly and decodes to the normalised addresses

    text = beacon.encode_beacon(addrs, password, hour)
    begin, end = beacon.markers(password)
    data = base62.decode(text[len(begin) : -len(end)])
    # nothing lost: the original's strict decoder (no padding) reads it
    assert beacon._decode_data(data, password, 24, hour) is not None
    assert set(beacon.decode_beacon(text, password, 24, hour)) == want

    # the original's encoding of the same input: one byte short, still decoded by ours
    short = base62.encode(beacon._encode_entries(entries, password, hour))
    assert len(base62.decode(short)) < len(data) or len(entries) > 1
    assert beacon._decode_data(base62.decode(short), password, 24, hour) is None
    assert set(beacon.decode_beacon(begin + short + end, password, 24, hour)) == want
