"""UPnP IGD port forwarding (spec 17), on the miniupnpc library (the reference UPnP IGD client).

The daemon uses it like this::

    mapper = PortMapper(listen_port)
    addrs = mapper.start()          # blocking (SSDP discovery); None when inactive
    if addrs: own addresses += addrs   # [internal, external], plain IPv4 (spec 10.5 item 3)
    ... every tick: mapper.renew_if_due(now)
    ... at exit:     mapper.stop()   # removes the mapping

``start`` blocks for the discovery time (``discover_ms``, 2 s by default) when no gateway answers, so a
daemon should call it from a helper thread (``start_async``) and hand the result to its loop.

Mapping attempts, first success wins (spec 17): the same external port as the internal one; any port
the gateway chooses (IGDv2 AddAnyPortMapping); internal port + 1 ... + 4; five random ports. A gateway
that answers "only permanent leases supported" (UPnP error 725) gets the same attempt again with lease
0; permanent mappings are never renewed. Leased mappings are renewed 60 s before they expire.

NAT-PMP is not implemented: no maintained Python client library offers it (miniupnpc speaks UPnP
only), and every NAT-PMP gateway we know of also speaks UPnP IGD.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from vpncloud.core.types import SocketAddr

from .logs import get_logger

log = get_logger()

#: Lease requested for every mapping (spec 17).
LEASE_SECS = 1800
#: A leased mapping is renewed this long before it would expire.
RENEW_BEFORE_SECS = 60
#: Retry delay after a failed renewal (the gateway may be rebooting).
RENEW_RETRY_SECS = 60
PROTOCOL = "UDP"
DESCRIPTION = "VpnCloud"
#: UPnP error 725 OnlyPermanentLeasesSupported (miniupnpc reports the error name as the message).
ONLY_PERMANENT = "OnlyPermanentLeasesSupported"


class UpnpClient(Protocol):
    """What we use of ``miniupnpc.UPnP`` (the real library in production and in tests)."""

    discoverdelay: int
    lanaddr: str

    def discover(self) -> int: ...
    def selectigd(self) -> str: ...
    def externalipaddress(self) -> str: ...
    def addportmapping(self, *args: Any) -> bool: ...
    def addanyportmapping(self, *args: Any) -> int: ...
    def deleteportmapping(self, *args: Any) -> bool: ...


@dataclass
class Mapping:
    """An active mapping: UDP ``external_port`` on the gateway -> ``internal``."""

    internal: SocketAddr  # plain IPv4
    external: SocketAddr  # plain IPv4: the gateway's external address + external port
    lease: int  # seconds; 0 = permanent
    next_renewal: float | None  # monotonic time, None for permanent mappings


class PortMapper:
    """Keeps one UDP port mapping on the LAN's UPnP gateway for the VPN's listen port."""

    def __init__(
        self,
        listen_port: int,
        *,
        discover_ms: int = 2000,
        lease: int = LEASE_SECS,
        rng: random.Random | None = None,
        client_factory: Callable[[], UpnpClient] | None = None,
    ) -> None:
        self.port = listen_port
        self.discover_ms = discover_ms
        self.lease = lease
        self.rng = rng or random.SystemRandom()
        self._factory = client_factory or _miniupnpc_client
        self.client: UpnpClient | None = None
        self.mapping: Mapping | None = None
        self._lock = threading.Lock()

    # --- startup -------------------------------------------------------------------------------------
    def start(self, now: float | None = None) -> list[SocketAddr] | None:
        """Find the gateway and map the port; ``[internal, external]`` on success, else None.

        Never raises: every failure is logged (info when simply no router exists) and leaves the
        feature inactive, like the original.
        """
        now = time.monotonic() if now is None else now
        try:
            client = self._factory()
        except ImportError as exc:
            log.warning("Port-forwarding: UPnP client library not available (%s)", exc)
            return None
        try:
            client.discoverdelay = self.discover_ms
            found = client.discover()
            if not found:
                log.info("Port-forwarding: no router found")
                return None
            client.selectigd()
        except Exception as exc:  # miniupnpc raises plain Exception with the UPnP error text
            log.info("Port-forwarding: no router found (%s)", exc)
            return None
        try:
            external_ip = client.externalipaddress()
        except Exception as exc:
            log.error("Port-forwarding: failed to get external IP: %s", exc)
            return None
        if not external_ip:
            log.error("Port-forwarding: the router reports no external IP address")
            return None
        internal_ip = client.lanaddr
        log.debug("Port-forwarding: found router, external IP %s, internal %s", external_ip, internal_ip)
        result = self._map(client, internal_ip)
        if result is None:
            log.error("Port-forwarding: all attempts to map port %d failed", self.port)
            return None
        ext_port, lease = result
        with self._lock:
            self.client = client
            self.mapping = Mapping(
                internal=(internal_ip, self.port),
                external=(external_ip, ext_port),
                lease=lease,
                next_renewal=(now + lease - RENEW_BEFORE_SECS) if lease > 0 else None,
            )
        log.info(
            "Port-forwarding: external IP %s, external port %d -> %s:%d (%s)",
            external_ip,
            ext_port,
            internal_ip,
            self.port,
            f"lease {lease} s" if lease else "permanent",
        )
        return [self.mapping.internal, self.mapping.external]

    def start_async(self, done: Callable[[list[SocketAddr] | None], None]) -> threading.Thread:
        """Run :meth:`start` on a daemon thread and call ``done(result)`` from it when finished."""
        thread = threading.Thread(target=lambda: done(self.start()), daemon=True, name="port-forwarding")
        thread.start()
        return thread

    def _attempts(self) -> list[int | None]:
        """External ports to try, in the original's order; None = "any port, gateway chooses"."""
        ports: list[int | None] = [self.port, None]
        ports += [p for p in (self.port + i for i in range(1, 5)) if p <= 0xFFFF]
        ports += [self.rng.randint(1024, 0xFFFF) for _ in range(5)]
        return ports

    def _map(self, client: UpnpClient, internal_ip: str) -> tuple[int, int] | None:
        for ext in self._attempts():
            lease = self.lease
            while True:
                try:
                    port = self._add(client, ext, internal_ip, lease)
                except Exception as exc:
                    if ONLY_PERMANENT in str(exc) and lease != 0:
                        log.debug("Port-forwarding: router only supports permanent leases")
                        lease = 0
                        continue
                    log.debug("Port-forwarding: attempt %s failed: %s", ext if ext else "any port", exc)
                    break
                return port, lease
        return None

    def _add(self, client: UpnpClient, ext: int | None, internal_ip: str, lease: int) -> int:
        if ext is not None:
            client.addportmapping(ext, PROTOCOL, internal_ip, self.port, DESCRIPTION, "", lease)
            return ext
        # miniupnpc's AddAnyPortMapping binding sends no lease (permanent); re-adding the chosen
        # port with our lease makes it an ordinary leased mapping that we renew.
        port = int(client.addanyportmapping(self.port, PROTOCOL, internal_ip, self.port, DESCRIPTION, ""))
        if not 0 < port <= 0xFFFF:
            raise RuntimeError(f"router chose invalid port {port}")
        client.addportmapping(port, PROTOCOL, internal_ip, self.port, DESCRIPTION, "", lease)
        return port

    # --- running ---------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether a mapping is in place."""
        return self.mapping is not None

    def addresses(self) -> list[SocketAddr]:
        """``[internal, external]`` of the active mapping (plain IPv4), or ``[]``."""
        m = self.mapping
        return [m.internal, m.external] if m else []

    def renew_if_due(self, now: float) -> bool:
        """Re-add the mapping when its renewal is due; returns whether a renewal was attempted.

        Cheap when nothing is due, so it can be called every tick. Blocks for one HTTP request to
        the gateway when renewing (once every 29 minutes).
        """
        with self._lock:
            m, client = self.mapping, self.client
            if m is None or client is None or m.next_renewal is None or now < m.next_renewal:
                return False
            try:
                client.addportmapping(
                    m.external[1], PROTOCOL, m.internal[0], m.internal[1], DESCRIPTION, "", self.lease
                )
            except Exception as exc:
                log.warning("Port-forwarding: failed to renew the mapping: %s", exc)
                m.next_renewal = now + RENEW_RETRY_SECS
                return True
            m.lease = self.lease
            m.next_renewal = now + self.lease - RENEW_BEFORE_SECS
            log.debug("Port-forwarding: renewed mapping of port %d", m.external[1])
            return True

    def stop(self) -> None:
        """Remove the mapping (best effort; logged). Idempotent."""
        with self._lock:
            m, client = self.mapping, self.client
            self.mapping = None
            if m is None or client is None:
                return
            try:
                client.deleteportmapping(m.external[1], PROTOCOL, "")
                log.info("Port-forwarding: removed mapping of port %d", m.external[1])
            except Exception as exc:
                log.warning("Port-forwarding: failed to remove the mapping: %s", exc)


def _miniupnpc_client() -> UpnpClient:
    import miniupnpc  # type: ignore[import-not-found]  # imported lazily: optional at runtime

    client: UpnpClient = miniupnpc.UPnP()
    return client
