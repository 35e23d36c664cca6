"""The VPN's one UDP socket: dual-stack IPv6 with v4-mapped addresses, IPv4 fallback (spec 3.4).

The core keys everything by mapped addresses (``::ffff:a.b.c.d``). On a dual-stack socket these are
exactly what the kernel reports and accepts. When IPv6 is unavailable the socket is plain IPv4 and the
conversion happens here, at the boundary: received sources are mapped before they reach the core, and
mapped destinations are unmapped before ``sendto``; real IPv6 destinations are dropped.

Besides the listening socket, the daemon opens one *connected* socket per established peer on the
same address and port (:meth:`UdpSocket.connect_peer`, issue 24). Linux delivers a datagram to the
most specific matching socket, so a peer's datagrams land in its own receive queue and a flood from
unknown sources only fills the listening socket's queue, where the kernel drops what overflows.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from vpncloud.core.types import SocketAddr, mapped
from vpncloud.fastpath.rows import Train

from .logs import get_logger

log = get_logger()

#: Datagrams read per wake-up before the loop flushes and looks at the other fds.
RECV_BATCH = 256

# Linux UDP offloads (not in Python 3.11's socket module)
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
#: Socket buffers: the kernel default (208 KB) overflows under a TCP burst through the tunnel.
SOCKET_BUFFER = 4 << 20
#: One UDP GSO send: at most this many datagrams (kernel UDP_MAX_SEGMENTS) and bytes. Above about
#: 65,000 bytes the kernel segments the train in software before it reaches the peer (gso_max_size),
#: so the receiver would see single datagrams again.
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)


class UdpSocket:
    """Non-blocking UDP socket bound to the listen address."""

    def __init__(self, bind: SocketAddr, *, force_ipv4: bool = False) -> None:
        host, port = bind
        self.ipv6 = False
        #: datagrams read from this socket (the flood test tells the queues apart with it)
        self.received = 0
        self.size_warned = False
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
            self.sock = _bind_shared(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), (host, port))
        self.sock.setblocking(False)
        self.gso = False
        self.gro = False
        if self.ipv6 and _ipv6_disabled():
            log.warning("IPv6 is disabled on this host: only IPv4 peers can be reached")

    def set_buffers(self, size: int = SOCKET_BUFFER) -> None:
        """Large send/receive buffers (forced as root, since rmem_max is global), best effort."""
        for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, force, size)
            except OSError:
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, plain, size)
                except OSError as exc:
                    log.debug("Cannot set socket buffer size: %s", exc.strerror)

    def enable_offloads(self) -> bool:
        """Turn on UDP GRO receives and GSO sends where the kernel has them; True if both work."""
        try:
            self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.gro = True
        except OSError as exc:
            log.info("UDP GRO not available: %s", exc.strerror)
        try:
            self.sock.getsockopt(SOL_UDP, UDP_SEGMENT)
            self.gso = True
        except OSError as exc:
            log.info("UDP GSO not available: %s", exc.strerror)
        return self.gro and self.gso

    def recv_trains(self, limit: int = RECV_BATCH) -> list[tuple[bytes, int, SocketAddr]]:
        """GRO receive: (data, segment size, mapped source) per read; ``data`` holds one or more
        datagrams of ``segment size`` bytes (the last may be shorter). Up to ``limit`` reads."""
        out: list[tuple[bytes, int, SocketAddr]] = []
        recvmsg = self.sock.recvmsg
        for _ in range(limit):
            try:
                data, anc, _flags, addr = recvmsg(65535, _GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("Socket receive error: %s", exc.strerror)
                continue
            seg = len(data)
            for level, kind, value in anc:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
                    seg = int.from_bytes(value[:4], "little") or seg
            host = addr[0] if self.ipv6 else "::ffff:" + addr[0]
            out.append((data, seg, (host, addr[1])))
            self.received += (len(data) + seg - 1) // seg if seg else 1
        return out

    def send_many(self, datagrams: list[bytes], addr: SocketAddr) -> None:
        """Send datagrams to one address, runs of equal size as UDP GSO trains where possible."""
        if not self.gso or len(datagrams) == 1:
            for d in datagrams:
                self.send(d, addr)
            return
        target = self._target(addr)
        if target is None:
            return
        i = 0
        n = len(datagrams)
        while i < n:
            size = len(datagrams[i])
            j = i + 1
            total = size
            limit = min(n, i + GSO_MAX_SEGMENTS)
            while j < limit:
                length = len(datagrams[j])
                if length > size or total + length > GSO_MAX_BYTES:
                    break
                total += length
                j += 1
                if length < size:
                    break  # a shorter datagram can only end a train
            if j - i == 1:
                self._sendto(datagrams[i], target)
            else:
                self._send_train(datagrams[i:j], size, target)
            i = j

    def send_train(self, train: Train, addr: SocketAddr) -> None:
        """Send a :class:`Train` (datagrams back to back in one buffer) with as few GSO sends as
        the kernel's limits allow; one datagram per send without GSO."""
        target = self._target(addr)
        if target is None:
            return
        view = memoryview(train.buf)
        seg = train.seg
        if not self.gso or train.count == 1:
            for pos in range(0, len(view), seg):
                self._sendto(view[pos : pos + seg], target)
            return
        per_send = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // seg)) * seg
        for pos in range(0, len(view), per_send):
            chunk = view[pos : pos + per_send]
            if len(chunk) <= seg:
                self._sendto(chunk, target)
            else:
                self._send_train([chunk], seg, target)

    def _send_train(self, train: list[bytes] | list[memoryview], size: int, target: tuple[str, int]) -> None:
        try:
            self.sock.sendmsg(train, [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))], 0, target)
        except BlockingIOError:
            log.debug("Socket buffer full, dropping %d datagrams", len(train))
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                # no GSO on this path (or this kernel): from now on one datagram per send
                log.info("UDP GSO send failed (%s); sending datagrams one by one", exc.strerror)
                self.gso = False
                for d in train:
                    # a chunk of a Train holds several datagrams
                    for pos in range(0, len(d), size):
                        self._sendto(d[pos : pos + size], target)
            else:
                self._send_failed(exc, size, target)

    def _target(self, addr: SocketAddr) -> tuple[str, int] | None:
        host, port = addr[0], addr[1]
        if not self.ipv6:
            ip = ipaddress.ip_address(host)
            if isinstance(ip, ipaddress.IPv6Address):
                if ip.ipv4_mapped is None:
                    log.debug("Cannot send to %s without IPv6", host)
                    return None
                host = str(ip.ipv4_mapped)
        elif "." in host and ":" not in host:
            host = "::ffff:" + host
        return host, port

    def _sendto(self, data: bytes | memoryview, target: tuple[str, int]) -> bool:
        try:
            self.sock.sendto(data, target)
            return True
        except BlockingIOError:
            log.debug("Socket buffer full, dropping a datagram to %s", target[0])
        except OSError as exc:
            self._send_failed(exc, len(data), target)
        return False

    def _send_failed(self, exc: OSError, size: int, target: tuple[str, int]) -> None:
        if exc.errno == errno.EMSGSIZE and not self.size_warned:
            # every full-size packet is lost from now on, so TCP crawls: say it once, loudly
            self.size_warned = True
            log.warning(
                "Datagrams of %d bytes do not fit the path to [%s]:%d (%s): the device MTU is too "
                "large for the underlay; lower it (further failures are only logged at debug level)",
                size,
                target[0],
                target[1],
                exc.strerror,
            )
        else:
            log.debug("Failed to send to [%s]:%d: %s", target[0], target[1], exc.strerror)

    @staticmethod
    def _open_v6(addr: SocketAddr) -> socket.socket:
        return _bind_shared(_dual_stack(), addr)

    def connect_peer(self, addr: SocketAddr) -> UdpSocket:
        """A socket on this socket's address and port, connected to the peer at ``addr`` (mapped):
        the kernel queues the peer's datagrams there instead of on this socket. Raises OSError."""
        target = self._target(addr)
        if target is None:
            raise OSError(errno.EAFNOSUPPORT, f"cannot reach {addr[0]} without IPv6")
        sock = _dual_stack() if self.ipv6 else socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(self.sock.getsockname()[:2])
            sock.connect(target)
            sock.setblocking(False)
            if self.gro:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            sock.close()
            raise
        peer = UdpSocket.__new__(UdpSocket)
        peer.sock = sock
        peer.ipv6 = self.ipv6
        peer.gso = self.gso
        peer.gro = self.gro
        peer.received = 0
        peer.size_warned = False
        return peer

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
        self.received += len(out)
        return out

    def send(self, data: bytes, addr: SocketAddr) -> bool:
        """Send one datagram; failures are logged and reported as False, never raised."""
        target = self._target(addr)
        if target is None:
            return False
        try:
            self.sock.sendto(data, target)
            return True
        except BlockingIOError:
            log.debug("Socket buffer full, dropping a datagram to %s", target[0])
        except OSError as exc:
            self._send_failed(exc, len(data), target)
        return False

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def _dual_stack() -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        # dual stack regardless of the OS default (net.ipv6.bindv6only)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_shared(sock: socket.socket, addr: SocketAddr) -> socket.socket:
    """Bind the listening socket so that peer sockets may share its port (``SO_REUSEPORT``, which
    the kernel only allows between sockets of one user), while a port already taken by anybody
    still fails as before: a probe without the option binds first."""
    try:
        with socket.socket(sock.family, socket.SOCK_DGRAM) as probe:
            if sock.family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind(addr)
            addr = (addr[0], probe.getsockname()[1])  # port 0: keep the one the probe got
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


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
