"""Node side of the WebSocket proxy: a drop-in for the daemon's UDP socket (spec 16.3).

A node whose ``listen`` is a ``ws://HOST:PORT/PATH`` URL talks to its peers through the proxy. This
adapter offers the same small interface as :class:`vpncloud.daemon.udp.UdpSocket` (``port``,
``fileno()``, ``recv_batch()``, ``send()``, ``close()``) plus ``sendto``/``recvfrom`` aliases, so the
daemon loop does not care which one it has. :attr:`own_address` is the address the proxy reported in
its first message: the node publishes it as its own address (spec 10.5 item 2).

Sending never blocks the event loop: frames go to an output buffer that is flushed whenever the TCP
socket takes data. When the proxy does not keep up, new datagrams are dropped (what a congested UDP
link would do) instead of buffering without bound. ``wants_write()``/``flush()`` let a loop that
watches write readiness drain the buffer sooner.
"""

from __future__ import annotations

import contextlib
import socket
import time
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from vpncloud.core.proxy_framing import ADDR_LEN, FramingError, encode_addr, split_message
from vpncloud.core.types import SocketAddr, format_sockaddr, nice

#: Pending output above which new datagrams are dropped.
MAX_OUTBUF = 4 * 1024 * 1024
#: Largest message accepted from the proxy (address + largest UDP payload).
MAX_MESSAGE = ADDR_LEN + 65535
RECV_SIZE = 65536


class ProxyError(OSError):
    """The proxy cannot be reached, refused the session, or the session broke."""


def is_proxy_url(listen: str) -> bool:
    """Whether a ``listen`` value selects proxy mode: only ``ws://`` URLs do (spec 16.3)."""
    return listen.strip().startswith("ws://")


def parse_url(url: str) -> tuple[str, int, str]:
    """``ws://HOST[:PORT][/PATH]`` -> ``(host, port, path)``; default port 80, default path ``/``."""
    if not is_proxy_url(url):
        raise ProxyError(f"not a ws:// URL: {url!r}")
    parts = urlsplit(url.strip())
    try:
        port = parts.port or 80
    except ValueError:
        raise ProxyError(f"invalid port in {url!r}") from None
    if not parts.hostname:
        raise ProxyError(f"no host in {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path


class ProxyClientSocket:
    """The node's "UDP socket" when it runs behind a WebSocket proxy."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        host, port, path = parse_url(url)
        self.url = url
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.outbuf = bytearray()
        self.inbuf: list[tuple[bytes, SocketAddr]] = []
        self.message = bytearray()
        self.message_too_big = False
        self.lost: str | None = None
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ProxyError(exc.errno, f"cannot connect to proxy {url}: {exc.strerror or exc}") from None
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.own_address = self._handshake(host if ":" not in host else f"[{host}]", port, path, timeout)
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)

    def _handshake(self, host: str, port: int, path: str, timeout: float) -> SocketAddr:
        """Upgrade to WebSocket and wait for the proxy's first binary message (our address)."""
        deadline = time.monotonic() + timeout
        self.sock.sendall(self.ws.send(Request(host=f"{host}:{port}", target=path)))
        accepted = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProxyError(f"proxy {self.url} did not answer in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(RECV_SIZE)
            except TimeoutError:
                continue
            if not data:
                raise ProxyError(f"proxy {self.url} closed the connection during the handshake")
            try:
                self.ws.receive_data(data)
                events = list(self.ws.events())
            except RemoteProtocolError as exc:
                raise ProxyError(f"proxy {self.url}: bad handshake: {exc}") from None
            for event in events:
                if isinstance(event, AcceptConnection):
                    accepted = True
                elif isinstance(event, (RejectConnection, RejectData)):
                    raise ProxyError(f"proxy {self.url} rejected the WebSocket session")
                elif isinstance(event, BytesMessage) and accepted:
                    self.message += event.data
                    if event.message_finished:
                        first = bytes(self.message)
                        self.message.clear()
                        try:
                            addr, _ = split_message(first)
                        except FramingError as exc:
                            raise ProxyError(f"proxy {self.url}: bad address message: {exc}") from None
                        return addr
                elif isinstance(event, Ping):
                    self.sock.sendall(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    raise ProxyError(f"proxy {self.url} closed the session")

    # --- the UdpSocket interface ------------------------------------------------------------------
    @property
    def port(self) -> int:
        """Our public port: the port of the UDP socket the proxy allocated for us."""
        return int(self.own_address[1])

    def fileno(self) -> int:
        """The TCP connection's fd, for the selector (readable = messages from the proxy)."""
        return self.sock.fileno()

    def recv_batch(self, limit: int = 256) -> list[tuple[bytes, SocketAddr]]:
        """Datagrams that arrived through the proxy, with mapped source addresses.

        Raises :class:`ProxyError` once the proxy session is gone (EOF, protocol error, Close): the
        node cannot reach anyone any more, which the original treats as fatal.
        """
        if self.lost is None:
            self._read()
        out, self.inbuf = self.inbuf[:limit], self.inbuf[limit:]
        if not out and self.lost is not None:
            raise ProxyError(f"connection to proxy {self.url} lost: {self.lost}")
        return out

    def _read(self) -> None:
        for _ in range(64):
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.lost = exc.strerror or str(exc)
                break
            if not data:
                self.lost = "closed by proxy"
                break
            try:
                self.ws.receive_data(data)
                self._events()
            except (RemoteProtocolError, LocalProtocolError) as exc:
                self.lost = f"protocol error: {exc}"
                break
        self.flush()

    def _events(self) -> None:
        for event in self.ws.events():
            if isinstance(event, BytesMessage):
                if len(self.message) + len(event.data) > MAX_MESSAGE:
                    self.message_too_big = True
                    self.message.clear()
                elif not self.message_too_big:
                    self.message += event.data
                if event.message_finished:
                    if not self.message_too_big:
                        with contextlib.suppress(FramingError):
                            src, payload = split_message(bytes(self.message))
                            self.inbuf.append((payload, src))
                    self.message_too_big = False
                    self.message.clear()
            elif isinstance(event, Ping):
                self._queue(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                with contextlib.suppress(LocalProtocolError):
                    self._queue(self.ws.send(event.response()))
                self.lost = "proxy closed the session"
            # text messages and pongs are ignored (spec 16.1)

    def send(self, data: bytes, addr: SocketAddr) -> bool:
        """Send one datagram via the proxy; False (never an exception) when it had to be dropped."""
        if self.lost is not None or len(self.outbuf) > MAX_OUTBUF:
            return False
        try:
            frame = self.ws.send(BytesMessage(data=encode_addr(addr) + bytes(data)))
        except (FramingError, LocalProtocolError):
            return False
        self._queue(frame)
        return True

    def _queue(self, data: bytes) -> None:
        self.outbuf += data
        self.flush()

    def flush(self) -> None:
        """Write as much of the output buffer as the TCP socket takes now."""
        while self.outbuf and self.lost is None:
            try:
                n = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.lost = exc.strerror or str(exc)
                return
            del self.outbuf[:n]

    def wants_write(self) -> bool:
        """Whether output is waiting for the TCP socket to become writable."""
        return bool(self.outbuf) and self.lost is None

    # aliases in socket style
    def sendto(self, data: bytes, addr: SocketAddr) -> bool:
        """Alias of :meth:`send` (socket-style argument order)."""
        return self.send(data, addr)

    def recvfrom(self) -> tuple[bytes, SocketAddr] | None:
        """The next datagram or None when nothing is waiting."""
        batch = self.recv_batch(1)
        return batch[0] if batch else None

    def close(self) -> None:
        """End the session politely (Close frame, best effort) and close the connection."""
        if self.lost is None:
            with contextlib.suppress(Exception):
                self.outbuf += self.ws.send(CloseConnection(code=1000))
                self.sock.setblocking(True)
                self.sock.settimeout(1.0)
                self.sock.sendall(self.outbuf)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.lost = self.lost or "closed"

    def __repr__(self) -> str:
        return f"ProxyClientSocket({self.url!r}, own={format_sockaddr(nice(self.own_address))})"
