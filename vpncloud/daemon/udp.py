"""The VPN's one UDP socket: dual-stack IPv6 with v4-mapped addresses, IPv4 fallback (spec 3.4).

The core keys everything by mapped addresses (``::ffff:a.b.c.d``). On a dual-stack socket these are
exactly what the kernel reports and accepts. When IPv6 is unavailable the socket is plain IPv4 and the
conversion happens here, at the boundary: received sources are mapped before they reach the core, and
mapped destinations are unmapped before ``sendto``; real IPv6 destinations are dropped.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from vpncloud.core.types import SocketAddr, mapped

from .logs import get_logger

log = get_logger()

#: Datagrams read per wake-up before the loop flushes and looks at the other fds.
RECV_BATCH = 256


class UdpSocket:
    """Non-blocking UDP socket bound to the listen address."""

    def __init__(self, bind: SocketAddr, *, force_ipv4: bool = False) -> None:
        host, port = bind
        self.ipv6 = False
        self.sock: socket.socket
        is_v4_host = "." in host and ":" not in host
        if not force_ipv4:
            try:
                self.sock = self._open_v6(mapped((host, port)) if is_v4_host else (host, port))
                self.ipv6 = True
            except OSError as exc:
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                    raise
                log.info("IPv6 is not available (%s); using an IPv4-only socket", exc.strerror)
        if not self.ipv6:
            if ":" in host and host not in ("::", "::ffff:0.0.0.0"):
                v4 = ipaddress.ip_address(host)
                if not (isinstance(v4, ipaddress.IPv6Address) and v4.ipv4_mapped):
                    raise OSError(errno.EAFNOSUPPORT, f"cannot bind IPv6 address {host} without IPv6")
                host = str(v4.ipv4_mapped)
            elif ":" in host:
                host = "0.0.0.0"
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((host, port))
        self.sock.setblocking(False)
        if self.ipv6 and _ipv6_disabled():
            log.warning("IPv6 is disabled on this host: only IPv4 peers can be reached")

    @staticmethod
    def _open_v6(addr: SocketAddr) -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            # dual stack regardless of the OS default (net.ipv6.bindv6only)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(addr)
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.sock.getsockname()[1])

    def fileno(self) -> int:
        """The fd for the selector."""
        return self.sock.fileno()

    def recv_batch(self, limit: int = RECV_BATCH) -> list[tuple[bytes, SocketAddr]]:
        """Everything waiting (up to ``limit``), with mapped source addresses."""
        out: list[tuple[bytes, SocketAddr]] = []
        for _ in range(limit):
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # ICMP errors of earlier sends surface here (ECONNREFUSED...); they are not fatal
                log.debug("Socket receive error: %s", exc.strerror)
                continue
            host, port = addr[0], addr[1]
            if not self.ipv6:
                host = "::ffff:" + host
            out.append((data, (host, port)))
        return out

    def send(self, data: bytes, addr: SocketAddr) -> bool:
        """Send one datagram; failures are logged and reported as False, never raised."""
        host, port = addr[0], addr[1]
        if not self.ipv6:
            ip = ipaddress.ip_address(host)
            if isinstance(ip, ipaddress.IPv6Address):
                if ip.ipv4_mapped is None:
                    log.debug("Cannot send to %s without IPv6", host)
                    return False
                host = str(ip.ipv4_mapped)
        elif "." in host and ":" not in host:
            host = "::ffff:" + host
        try:
            self.sock.sendto(data, (host, port))
            return True
        except BlockingIOError:
            log.debug("Socket buffer full, dropping a datagram to %s", host)
        except OSError as exc:
            log.debug("Failed to send to [%s]:%d: %s", host, port, exc.strerror)
        return False

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def _ipv6_disabled() -> bool:
    try:
        with open("/proc/sys/net/ipv6/conf/all/disable_ipv6") as fh:
            return fh.read().strip() == "1"
    except OSError:
        return True


def primary_addresses(port: int) -> list[SocketAddr]:
    """The host's primary address(es) by route lookup (spec 10.5 item 2); no packet is sent.

    IPv4 via 8.8.8.8 as the original; we also try a global IPv6 route so IPv6-only hosts publish
    something. Without a default route the lookup fails and the list is simply shorter.
    """
    out: list[SocketAddr] = []
    for family, target in ((socket.AF_INET, "8.8.8.8"), (socket.AF_INET6, "2001:4860:4860::8888")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 53))
                ip = probe.getsockname()[0]
        except OSError:
            continue
        addr = ipaddress.ip_address(ip)
        if addr.is_unspecified or addr.is_link_local:
            continue
        out.append(mapped((ip, port)))
    return out


def resolve(name: str, default_port: int = 3210) -> list[SocketAddr]:
    """Resolve ``host[:port]`` like the original: all results, IPv4 first, no duplicates (spec 3.4).

    Raises OSError (socket.gaierror) when the name does not resolve.
    """
    text = name.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif text.count(":") > 1:
        host, port_text = text, ""
    else:
        host, port_text = text, ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise OSError(errno.EINVAL, f"invalid port in {name!r}") from None
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    v4: list[SocketAddr] = []
    v6: list[SocketAddr] = []
    for family, _t, _p, _c, sa in infos:
        entry = (str(sa[0]), int(sa[1]))
        target = v4 if family == socket.AF_INET else v6
        if entry not in target:
            target.append(entry)
    return v4 + v6
