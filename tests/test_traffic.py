"""Traffic counters, periods, the stats file (spec 18.2) and statsd lines (18.3).

The stats-file renderer is checked against the three files written by the 2.4.0 binary: the inputs are
parsed back out of each file, fed through the counting methods and rendered again byte for byte.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vpncloud.core.table import ClaimTable
from vpncloud.core.traffic import IDLE_PERIODS, TrafficStats, format_rate
from vpncloud.core.types import Range, mapped, parse_address, parse_sockaddr

VECTORS = Path(__file__).parent / "fixtures" / "vectors"

PEER_RE = re.compile(r'^  - "(?P<addr>[^"]+)": \{ ttl_secs: (?P<ttl>-?\d+), crypto: (?P<crypto>\w+) \}$')
ENTRY_RE = re.compile(r'^    - "(?P<key>[^"]+)": \{ peer: "(?P<peer>[^"]+)", timeout: (?P<left>-?\d+) \}$')
TRAFFIC_RE = re.compile(r'\{ display: "[^"]+", bytes: (?P<bytes>\d+), packets: (?P<packets>\d+) \}$')


def _numbers(line: str) -> tuple[int, int]:
    match = TRAFFIC_RE.search(line)
    assert match, line
    return int(match["bytes"]), int(match["packets"])


def _feed(count: object, nbytes: int, packets: int, *key: object) -> None:
    """Call a counting method ``packets`` times with sizes adding up to ``nbytes``."""
    for i in range(packets):
        size = nbytes // packets + (nbytes % packets if i == 0 else 0)
        count(*key, size)  # type: ignore[operator]


def _rebuild(
    text: str, now: float
) -> tuple[TrafficStats, list[tuple[tuple[str, int], int, str]], list, list]:
    """Parse a stats file back into counting calls and table snapshots (no renderer code reused)."""
    stats = TrafficStats()
    peers: list[tuple[tuple[str, int], int, str]] = []
    claims: list[tuple[Range, tuple[str, int], float]] = []
    cache: list[tuple[bytes, tuple[str, int], float]] = []
    section = ""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line in ("peers:", "peer_traffic:", "payload_traffic:", "  claims:", "  cache:"):
            section = line.strip()
        elif section == "peers:" and (m := PEER_RE.match(line)):
            peers.append((mapped(parse_sockaddr(m["addr"])), int(m["ttl"]), m["crypto"]))
        elif section in ("claims:", "cache:") and (m := ENTRY_RE.match(line)):
            peer = mapped(parse_sockaddr(m["peer"]))
            expiry = int(now) + int(m["left"])
            if section == "claims:":
                claims.append((Range.parse(m["key"]), peer, expiry))
            else:
                cache.append((parse_address(m["key"]), peer, expiry))
        elif section == "peer_traffic:" and line.startswith("  - peer: "):
            peer = mapped(parse_sockaddr(line.split('"')[1]))
            _feed(stats.count_in_traffic, *_numbers(lines[i + 1]), peer)
            _feed(stats.count_out_traffic, *_numbers(lines[i + 2]), peer)
            i += 2
        elif section == "payload_traffic:" and line.startswith("  - addrs: "):
            remote, local = (parse_address(x) for x in re.findall(r'"([^"]+)"', line))
            _feed(stats.count_in_payload, *_numbers(lines[i + 1]), remote, local)
            _feed(stats.count_out_payload, *_numbers(lines[i + 2]), remote, local)
            i += 2
        elif line.startswith("invalid_protocol_traffic:"):
            _feed(stats.count_invalid_protocol, *_numbers(line))
        elif line.startswith("dropped_payload_traffic:"):
            _feed(stats.count_dropped_payload, *_numbers(line))
        i += 1
    return stats, peers, claims, cache


@pytest.mark.parametrize("name", ["stats.node1.stats.txt", "stats.node2.stats.txt", "stats.node3.stats.txt"])
def test_stats_file_from_the_binary_renders_byte_identical(name: str) -> None:
    text = (VECTORS / name).read_text()
    now = 5000.7
    stats, peers, claims, cache = _rebuild(text, now)
    assert len(peers) == 2 and len(claims) == 2  # each node had two peers
    assert stats.peers and stats.payload
    assert stats.stats_text(peers, claims, cache, now) == text


def test_stats_text_from_a_real_table() -> None:
    table = ClaimTable(300, 300)
    peer = ("::ffff:10.240.0.2", 3210)
    table.set_claims(peer, [Range.parse("10.241.0.2/32")], 100)
    assert table.lookup(parse_address("10.241.0.2"), 120) == peer
    stats = TrafficStats()
    text = stats.stats_text([(peer, 243, "AES128")], table.claims(), table.cache(), 157)
    assert '    - "10.241.0.2/32": { peer: "10.240.0.2:3210", timeout: 243 }' in text
    assert '    - "10.241.0.2": { peer: "10.240.0.2:3210", timeout: 243 }' in text


def test_empty_stats_text_layout() -> None:
    expected = (
        "peers:\n\nforwarding_table:\n  claims:\n  cache:\n\npeer_traffic:\n\npayload_traffic:\n\n"
        'invalid_protocol_traffic: { display: "0 B/s", bytes: 0, packets: 0 }\n'
        'dropped_payload_traffic: { display: "0 B/s", bytes: 0, packets: 0 }\n\n'
    )
    assert TrafficStats().stats_text([], [], [], 0) == expected


def test_ipv6_peers_and_sorting_by_volume() -> None:
    stats = TrafficStats()
    small, big, mid = ("fd00::1", 3210), ("::ffff:10.0.0.2", 3210), ("fd00::3", 1)
    stats.count_in_traffic(small, 10)
    stats.count_out_traffic(big, 5000)
    stats.count_in_traffic(mid, 100)
    stats.count_out_traffic(mid, 100)
    text = stats.stats_text([(small, 1, "PLAIN")], [], [], 0)
    assert '  - "[fd00::1]:3210": { ttl_secs: 1, crypto: PLAIN }' in text
    order = re.findall(r'  - peer: "([^"]+)"', text)
    assert order == ["10.0.0.2:3210", "[fd00::3]:1", "[fd00::1]:3210"]
    assert 'out: { display: "83 B/s", bytes: 5000, packets: 1 }' in text


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (0, "0 B"),
        (511, "511 B"),
        (512, "0.5 KiB"),
        (1536, "1.5 KiB"),
        (512 * 1024 - 1, "512.0 KiB"),
        (512 * 1024, "0.5 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (700 * 1024**4, "700.0 TiB"),
    ],
)
def test_format_rate(rate: int, text: str) -> None:
    assert format_rate(rate) == text


def test_period_moves_to_totals_and_forgets_idle_entries() -> None:
    stats = TrafficStats()
    peer = ("::ffff:10.0.0.1", 1)
    stats.count_in_traffic(peer, 100)
    stats.count_out_payload(b"\x0a\x00\x00\x02", b"\x0a\x00\x00\x01", 84)
    stats.count_invalid_protocol(7)
    stats.count_dropped_payload(9)
    stats.period()
    entry = stats.peers[peer]
    assert (entry.in_bytes, entry.in_packets, entry.in_bytes_total, entry.in_packets_total) == (0, 0, 100, 1)
    assert stats.dropped.in_bytes_total == 7 and stats.dropped.out_bytes_total == 9
    assert stats.dropped.in_packets == 0
    for _ in range(IDLE_PERIODS - 2):
        stats.period()
    stats.count_out_traffic(peer, 1)  # activity resets the idle counter of this entry only
    stats.period()
    assert peer in stats.peers and len(stats.payload) == 1
    stats.period()
    assert peer in stats.peers and stats.payload == {}  # payload idle 5 periods, peer idle 1
    for _ in range(IDLE_PERIODS - 2):
        stats.period()
    assert peer in stats.peers
    stats.period()
    assert stats.peers == {}


def test_statsd_text() -> None:
    stats = TrafficStats()
    p1, p2 = ("::ffff:10.0.0.1", 1), ("::ffff:10.0.0.2", 1)
    stats.count_in_traffic(p1, 100)
    stats.count_in_traffic(p2, 50)
    stats.count_out_traffic(p2, 70)
    stats.count_in_payload(b"a", b"b", 30)
    stats.count_out_payload(b"a", b"b", 20)
    stats.count_out_payload(b"c", b"b", 21)
    stats.count_invalid_protocol(0)
    stats.count_dropped_payload(21)
    expected = "\n".join(
        [
            "pfx.peer_count:2|g",
            "pfx.table_cache_entries:3|g",
            "pfx.table_claims:4|g",
            "pfx.traffic.protocol.inbound.bytes:150|c",
            "pfx.traffic.protocol.inbound.packets:2|c",
            "pfx.traffic.protocol.outbound.bytes:70|c",
            "pfx.traffic.protocol.outbound.packets:1|c",
            "pfx.traffic.payload.inbound.bytes:30|c",
            "pfx.traffic.payload.inbound.packets:1|c",
            "pfx.traffic.payload.outbound.bytes:41|c",
            "pfx.traffic.payload.outbound.packets:2|c",
            "pfx.invalid_protocol_traffic.bytes:0|c",
            "pfx.invalid_protocol_traffic.packets:1|c",
            "pfx.dropped_payload.bytes:21|c",
            "pfx.dropped_payload.packets:1|c",
        ]
    )
    assert stats.statsd_text("pfx", 2, 3, 4) == expected
    stats.period()  # counters are per-period deltas
    assert "vpncloud.traffic.protocol.inbound.bytes:0|c" in stats.statsd_text("vpncloud", 0, 0, 0)


def test_snapshot_is_json_able() -> None:
    import json

    stats = TrafficStats()
    stats.count_in_traffic(("::ffff:10.0.0.1", 1), 5)
    stats.count_in_payload(b"\x0a\x00\x00\x02", b"\x0a\x00\x00\x01", 5)
    doc = json.loads(json.dumps(stats.snapshot()))
    assert doc["peers"]["10.0.0.1:1"]["in_bytes"] == 5
    assert doc["payload"][0]["remote"] == "10.0.0.2"
