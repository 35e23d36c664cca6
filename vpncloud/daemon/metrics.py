"""Prometheus metrics (``--metrics-listen``, ours): the control socket's status, as metric families.

Nothing here counts anything. :func:`families` turns one ``status`` snapshot (the dict that
``vpncloud status --json`` prints) into metric families, so the metrics and the status output cannot
disagree, and the data path pays nothing for metrics.

Label sets are bounded: peers are labelled by node id (one per authenticated session peer), traffic
of addresses without a session (pending handshakes, peers that left) is summed under
``peer="other"``, drops and handshakes use fixed reason/result sets. No per-source-address label
exists, so a flood from spoofed addresses cannot create series.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from vpncloud.core.node import HANDSHAKE_RESULTS, TICK
from vpncloud.core.traffic import DROP_REASONS

#: label of traffic not attributable to a session peer
OTHER = "other"

#: Every family this module can export: name (as in the exposition, counters with ``_total``) -> type.
#: The dashboard test checks its queries against this.
FAMILIES: dict[str, str] = {
    "vpncloud_info": "info",
    "vpncloud_dataplane_info": "info",
    "vpncloud_uptime_seconds": "gauge",
    "vpncloud_peers_connected": "gauge",
    "vpncloud_handshakes_pending": "gauge",
    "vpncloud_claims": "gauge",
    "vpncloud_peer_traffic_bytes_total": "counter",
    "vpncloud_peer_traffic_packets_total": "counter",
    "vpncloud_payload_bytes_total": "counter",
    "vpncloud_payload_packets_total": "counter",
    "vpncloud_peer_connected_seconds": "gauge",
    "vpncloud_peer_key_age_seconds": "gauge",
    "vpncloud_peer_key_rotations_total": "counter",
    "vpncloud_handshakes_total": "counter",
    "vpncloud_dropped_packets_total": "counter",
}

_DIRECTIONS = (("in", "in"), ("out", "out"))


def families(status: dict[str, Any]) -> list[Metric]:
    """Metric families of one status snapshot (``Daemon._control_request({"cmd": "status"})``)."""
    out: list[Metric] = []
    info = InfoMetricFamily("vpncloud", "Version and identity of this node", labels=[])
    info.add_metric(
        [],
        {
            "version": str(status.get("version", "")),
            "node_id": str(status.get("node_id", "")),
            "mode": str(status.get("mode", "")),
            "device_type": str(status.get("device_type", "")),
        },
    )
    out.append(info)
    dataplane = status.get("dataplane") or {}
    dp = InfoMetricFamily("vpncloud_dataplane", "Data-plane mode and offloads in use", labels=[])
    dp.add_metric(
        [],
        {
            "mode": str(dataplane.get("mode", "")),
            "kernels": str(dataplane.get("kernels", "")),
            "udp_gso": str(bool(dataplane.get("udp_gso"))).lower(),
            "udp_gro": str(bool(dataplane.get("udp_gro"))).lower(),
        },
    )
    out.append(dp)
    if "uptime_secs" in status:
        out.append(GaugeMetricFamily("vpncloud_uptime_seconds", "Seconds since start", status["uptime_secs"]))
    peers: list[dict[str, Any]] = status.get("peers", [])
    out.append(GaugeMetricFamily("vpncloud_peers_connected", "Peer sessions established", len(peers)))
    out.append(
        GaugeMetricFamily(
            "vpncloud_handshakes_pending", "Handshakes in progress", len(status.get("pending", []))
        )
    )
    claims = GaugeMetricFamily("vpncloud_claims", "Claimed address ranges", labels=["origin"])
    claims.add_metric(["local"], len(status.get("claims", [])))
    claims.add_metric(["remote"], len((status.get("table") or {}).get("claims", [])))
    out.append(claims)
    out += _traffic(status)
    out += _peer_families(peers)
    handshakes = CounterMetricFamily(
        "vpncloud_handshakes", "Handshakes by result since start", labels=["result"]
    )
    counts = status.get("handshakes", {})
    for result in HANDSHAKE_RESULTS:
        handshakes.add_metric([result], counts.get(result, 0))
    out.append(handshakes)
    drops = CounterMetricFamily(
        "vpncloud_dropped_packets", "Datagrams and payload packets dropped, by reason", labels=["reason"]
    )
    counts = (status.get("traffic") or {}).get("drops", {})
    for reason in DROP_REASONS:
        drops.add_metric([reason], counts.get(reason, 0))
    out.append(drops)
    return out


def _traffic(status: dict[str, Any]) -> list[Metric]:
    traffic = status.get("traffic") or {}
    node_of = {p["addr"]: p["node_id"] for p in status.get("peers", [])}
    # bytes/packets by (peer label, direction); a node reached under two addresses is summed
    sums: dict[tuple[str, str], list[int]] = {}
    entries: list[tuple[str, dict[str, int]]] = [
        (node_of.get(addr, OTHER), entry) for addr, entry in (traffic.get("peers") or {}).items()
    ]
    retired = traffic.get("retired") or {}
    entries.append((OTHER, retired.get("peers") or {}))
    for label, entry in entries:
        for direction, key in _DIRECTIONS:
            acc = sums.setdefault((label, direction), [0, 0])
            acc[0] += entry.get(f"{key}_bytes_total", 0)
            acc[1] += entry.get(f"{key}_packets_total", 0)
    nbytes = CounterMetricFamily(
        "vpncloud_peer_traffic_bytes",
        "Protocol bytes (UDP payload) exchanged with each peer",
        labels=["peer", "direction"],
    )
    packets = CounterMetricFamily(
        "vpncloud_peer_traffic_packets", "Datagrams exchanged with each peer", labels=["peer", "direction"]
    )
    for (label, direction), (b, n) in sorted(sums.items()):
        nbytes.add_metric([label, direction], b)
        packets.add_metric([label, direction], n)
    payload_bytes = CounterMetricFamily(
        "vpncloud_payload_bytes", "Payload bytes between the device and the mesh", labels=["direction"]
    )
    payload_packets = CounterMetricFamily(
        "vpncloud_payload_packets", "Payload packets between the device and the mesh", labels=["direction"]
    )
    payload = [*(traffic.get("payload") or []), retired.get("payload") or {}]
    for direction, key in _DIRECTIONS:
        payload_bytes.add_metric([direction], sum(e.get(f"{key}_bytes_total", 0) for e in payload))
        payload_packets.add_metric([direction], sum(e.get(f"{key}_packets_total", 0) for e in payload))
    return [nbytes, packets, payload_bytes, payload_packets]


def _peer_families(peers: Iterable[dict[str, Any]]) -> list[Metric]:
    connected = GaugeMetricFamily(
        "vpncloud_peer_connected_seconds", "Seconds since the session started", labels=["peer"]
    )
    age = GaugeMetricFamily(
        "vpncloud_peer_key_age_seconds", "Seconds since the sending key last changed", labels=["peer"]
    )
    rotations = CounterMetricFamily(
        "vpncloud_peer_key_rotations", "Sending-key switches in the current session", labels=["peer"]
    )
    by_id: dict[str, list[float]] = {}
    for peer in peers:
        rotation = peer.get("rotation") or {}
        values = by_id.setdefault(peer["node_id"], [0.0, 0.0, 0.0])
        # twin sessions of one node (IPv4 and IPv6): the longest-lived one, the oldest key
        values[0] = max(values[0], float(peer.get("connected_secs", 0)))
        if rotation:
            values[1] = max(values[1], rotation.get("ticks_since_key_switch", 0) * TICK)
            values[2] += rotation.get("key_rotations", 0)
    for node_id, (secs, key_age, switches) in sorted(by_id.items()):
        connected.add_metric([node_id], secs)
        age.add_metric([node_id], key_age)
        rotations.add_metric([node_id], switches)
    return [connected, age, rotations]


class StatusCollector(Collector):
    """Reads a fresh status snapshot at every scrape and exports it (see the module docstring)."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from families(self._snapshot())

    def describe(self) -> Iterable[Metric]:
        # no scrape at registration: the loop that answers snapshots is not running yet
        return []


class LoopSnapshot:
    """A status snapshot taken on the daemon's loop thread, for the HTTP server's thread.

    The node is single-threaded and mutated by the loop without locks; reading its dicts from
    another thread could see them mid-update (or fail with "dict changed size during iteration").
    So a scrape posts the status request to the loop, as the control socket is served, and waits
    for the answer: the snapshot is taken between two events, and the data path takes no lock.
    """

    def __init__(
        self, post: Callable[[Callable[[], None]], None], status: Callable[[], dict[str, Any]], timeout: float
    ) -> None:
        self._post = post
        self._status = status
        self._timeout = timeout

    def __call__(self) -> dict[str, Any]:
        done = threading.Event()
        box: list[dict[str, Any]] = []

        def task() -> None:
            try:
                box.append(self._status())
            finally:
                done.set()

        self._post(task)
        if not done.wait(self._timeout) or not box:
            raise TimeoutError("the daemon loop did not answer the metrics scrape in time")
        return box[0]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds must not end up on stderr (the daemon's log)


class MetricsServer:
    """prometheus_client's WSGI app on a threaded HTTP server, with a registry of just our collector.

    The socket is bound when this is made (in ``Daemon.setup``, before ``--daemon`` forks and before
    the privilege drop, so a port below 1024 works); requests are served once :meth:`start` runs.
    """

    def __init__(self, host: str, port: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(snapshot))
        server = _Server6 if ":" in host else _Server
        self._server = make_server(host, port, make_wsgi_app(self.registry), server, _QuietHandler)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(2.0)
        self._server.server_close()
