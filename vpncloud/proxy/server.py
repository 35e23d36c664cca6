"""The WebSocket proxy server, ``vpncloud ws-proxy -l ADDR`` (spec 16.2).

Each WebSocket client gets its own UDP socket on ``[::]:0``. The first message to the client is the
18-byte address under which its UDP socket is reachable (the proxy host's primary IPv4, mapped, plus
the UDP port); afterwards every binary message from the client is ``[destination][payload]`` and is
sent from that UDP socket, and every datagram received there goes back as ``[source][payload]``.

The original runs one thread per connection with blocking I/O. Here one thread multiplexes every
connection with ``selectors`` and non-blocking sockets, so a slow or misbehaving client (half a
handshake, a never-ending frame, a full receive window) can never stall the others: each connection
has bounded buffers, a handshake deadline and is dropped on any protocol error. After 60 s without
traffic in either direction an empty Ping is sent, like the original.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import threading
import time
from collections.abc import Callable

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from vpncloud.core.proxy_framing import ADDR_LEN, FramingError, encode_addr, split_message
from vpncloud.core.types import SocketAddr, format_sockaddr, nice
from vpncloud.daemon.logs import get_logger
from vpncloud.daemon.udp import primary_addresses

log = get_logger()

#: Seconds without any traffic after which the proxy pings the client (spec 16.2).
PING_INTERVAL = 60.0
#: A client must finish the HTTP upgrade within this time; half handshakes are dropped after it.
HANDSHAKE_TIMEOUT = 10.0
#: Largest message accepted from a client: address + the largest UDP payload. Bigger -> close 1009.
MAX_MESSAGE = ADDR_LEN + 65535
#: Pending bytes towards one client above which received datagrams are dropped (UDP semantics)
#: instead of buffering without bound for a client that does not read.
MAX_OUTBUF = 4 * 1024 * 1024
#: Datagrams read from one UDP socket per wake-up, so one busy client cannot starve the rest.
UDP_BATCH = 64
RECV_SIZE = 65536


class _Client:
    """One WebSocket client: TCP socket, wsproto state machine, its UDP socket and buffers."""

    def __init__(self, server: ProxyServer, sock: socket.socket, peer: str, now: float) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.ws = WSConnection(ConnectionType.SERVER)
        self.udp: socket.socket | None = None
        self.outbuf = bytearray()
        self.message = bytearray()
        self.open = False
        self.closed = False
        self.created = now
        self.last_activity = now
        self.udp_addr: SocketAddr | None = None

    # --- TCP side ----------------------------------------------------------------------------------
    def on_tcp_readable(self, now: float) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(f"receive error: {exc.strerror or exc}")
            return
        if not data:
            # abrupt close without a Close frame (or a half handshake that gave up)
            self.close("connection closed by client")
            return
        self.last_activity = now
        try:
            self.ws.receive_data(data)
            self._handle_events()
        except (RemoteProtocolError, LocalProtocolError) as exc:
            # garbage instead of HTTP/WebSocket: answer what wsproto can still say, then drop
            with contextlib.suppress(Exception):
                if isinstance(exc, RemoteProtocolError) and exc.event_hint is not None:
                    self._send(self.ws.send(exc.event_hint))
            self._flush()
            self.close(f"protocol error: {exc}")

    def _handle_events(self) -> None:
        for event in self.ws.events():
            if self.closed:
                return
            if isinstance(event, Request):
                self._accept()
            elif isinstance(event, BytesMessage):
                self._on_bytes(event)
            elif isinstance(event, TextMessage):
                # not part of the protocol; ignored like the original ignores non-binary messages
                continue
            elif isinstance(event, Ping):
                self._send(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                with contextlib.suppress(LocalProtocolError):
                    self._send(self.ws.send(event.response()))
                self._flush()
                self.close("client closed the session")
                return

    def _accept(self) -> None:
        udp = _open_udp()
        self.udp = udp
        port = udp.getsockname()[1]
        self.udp_addr = self.server.public_address(port, self.sock)
        self._send(self.ws.send(AcceptConnection()))
        self._send(self.ws.send(BytesMessage(data=encode_addr(self.udp_addr))))
        self.open = True
        self.server.register_udp(self)
        log.info("Client %s connected, UDP address %s", self.peer, format_sockaddr(nice(self.udp_addr)))

    def _on_bytes(self, event: BytesMessage) -> None:
        if len(self.message) + len(event.data) > MAX_MESSAGE:
            # wsproto streams a frame of any announced size; the limit is ours. Close at once
            # (1009 = message too big) instead of swallowing the rest of a possibly endless frame.
            self.message.clear()
            with contextlib.suppress(LocalProtocolError):
                self._send(self.ws.send(CloseConnection(code=1009, reason="message too big")))
            self._flush()
            self.close("message too big")
            return
        self.message += event.data
        if not event.message_finished:
            return
        data = bytes(self.message)
        self.message.clear()
        try:
            dst, payload = split_message(data)
        except FramingError as exc:
            log.debug("Client %s: dropping message: %s", self.peer, exc)
            return
        if self.udp is None:
            return
        try:
            self.udp.sendto(payload, dst)
        except OSError as exc:
            # unreachable destinations, ICMP errors, full buffers: a UDP send failure drops one datagram
            log.debug("Client %s: failed to send to %s: %s", self.peer, format_sockaddr(dst), exc)

    # --- UDP side ----------------------------------------------------------------------------------
    def on_udp_readable(self, now: float) -> None:
        assert self.udp is not None
        for _ in range(UDP_BATCH):
            try:
                data, addr = self.udp.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP errors of earlier sends surface here; not fatal
                continue
            self.last_activity = now
            if len(self.outbuf) > MAX_OUTBUF:
                continue  # client does not keep up: drop like a congested UDP link would
            try:
                frame = encode_addr((addr[0], addr[1])) + data
            except FramingError:
                continue
            self._send(self.ws.send(BytesMessage(data=frame)))

    # --- output ------------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        if data:
            self.outbuf += data
            self._flush()

    def _flush(self) -> None:
        while self.outbuf and not self.closed:
            try:
                n = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close(f"send error: {exc.strerror or exc}")
                return
            del self.outbuf[:n]
        if not self.closed:
            self.server.want_write(self, bool(self.outbuf))

    def on_tcp_writable(self) -> None:
        self._flush()

    def on_timer(self, now: float) -> None:
        if not self.open:
            if now - self.created > HANDSHAKE_TIMEOUT:
                self.close("handshake not completed in time")
            return
        if now - self.last_activity >= PING_INTERVAL:
            self.last_activity = now
            with contextlib.suppress(LocalProtocolError):
                self._send(self.ws.send(Ping()))

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        log.info("Client %s disconnected: %s", self.peer, reason)
        self.server.forget(self)
        for s in (self.sock, self.udp):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


def _open_udp() -> socket.socket:
    """A UDP socket on ``[::]:0`` (dual stack), or ``0.0.0.0:0`` where IPv6 is unavailable."""
    try:
        udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        udp.bind(("::", 0))
    except OSError:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("0.0.0.0", 0))
    udp.setblocking(False)
    return udp


class ProxyServer:
    """The proxy: a listening TCP socket and all client sessions, served from one thread."""

    def __init__(self, listen: SocketAddr) -> None:
        self.listen_addr = listen
        self.sel = selectors.DefaultSelector()
        self.clients: set[_Client] = set()
        self.sock = self._open_listener(listen)
        self.sock.setblocking(False)
        self.sel.register(self.sock, selectors.EVENT_READ, self._on_accept)
        self._stop_r, self._stop_w = socket.socketpair()
        self._stop_r.setblocking(False)
        self.sel.register(self._stop_r, selectors.EVENT_READ, None)
        self._stopped = False
        self._primary_cache: tuple[float, str | None] = (-1e9, None)

    @staticmethod
    def _open_listener(listen: SocketAddr) -> socket.socket:
        host, port = listen
        v4 = "." in host and ":" not in host
        sock = socket.socket(socket.AF_INET if v4 else socket.AF_INET6, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if not v4:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def port(self) -> int:
        """The bound TCP port (useful with port 0)."""
        return int(self.sock.getsockname()[1])

    def public_address(self, udp_port: int, conn: socket.socket) -> SocketAddr:
        """Where this client's UDP socket is reachable: primary IPv4 (mapped) + its port (spec 16.1).

        Without a default route the route lookup finds nothing; the address on which the client
        reached us is the next best answer (the original would fail the session instead).
        """
        now = time.monotonic()
        stamp, host = self._primary_cache
        if now - stamp > 60:
            addrs = [a for a in primary_addresses(udp_port) if a[0].startswith("::ffff:")]
            host = addrs[0][0] if addrs else None
            self._primary_cache = (now, host)
        if host is None:
            host = conn.getsockname()[0]
            if "." in host and ":" not in host:
                host = "::ffff:" + host
        return (host, udp_port)

    # --- registry ----------------------------------------------------------------------------------
    def register_udp(self, client: _Client) -> None:
        assert client.udp is not None
        self.sel.register(client.udp, selectors.EVENT_READ, (client, "udp"))

    def want_write(self, client: _Client, flag: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if flag else 0)
        with contextlib.suppress(KeyError, ValueError):
            if self.sel.get_key(client.sock).events != events:
                self.sel.modify(client.sock, events, (client, "tcp"))

    def forget(self, client: _Client) -> None:
        self.clients.discard(client)
        for s in (client.sock, client.udp):
            if s is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(s)

    def _on_accept(self, now: float) -> None:
        for _ in range(64):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: keep serving the existing clients
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("Cannot accept more clients: %s", exc.strerror)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(self, conn, format_sockaddr(nice((addr[0], addr[1]))), now)
            self.clients.add(client)
            self.sel.register(conn, selectors.EVENT_READ, (client, "tcp"))

    # --- running -----------------------------------------------------------------------------------
    def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until :meth:`stop` is called (from any thread or a signal handler)."""
        log.info("Listening on ws://%s", format_sockaddr(nice(self.sock.getsockname()[:2])))
        if on_ready is not None:
            on_ready()
        next_timer = time.monotonic() + 1.0
        while not self._stopped:
            timeout = max(0.0, next_timer - time.monotonic())
            try:
                ready = self.sel.select(timeout)
            except InterruptedError:
                ready = []
            now = time.monotonic()
            for key, mask in ready:
                if key.data is None:
                    with contextlib.suppress(OSError):
                        self._stop_r.recv(64)
                    continue
                if callable(key.data):
                    key.data(now)
                    continue
                client, kind = key.data
                if client.closed:
                    continue
                try:
                    if kind == "udp":
                        client.on_udp_readable(now)
                    else:
                        if mask & selectors.EVENT_WRITE:
                            client.on_tcp_writable()
                        if mask & selectors.EVENT_READ and not client.closed:
                            client.on_tcp_readable(now)
                except Exception as exc:
                    # a bug triggered by one client must cost only that client
                    log.error("Client %s: unexpected error: %s: %s", client.peer, type(exc).__name__, exc)
                    client.close("internal error")
            if now >= next_timer:
                next_timer = now + 1.0
                for client in list(self.clients):
                    client.on_timer(now)
        self.close()

    def stop(self) -> None:
        """Make :meth:`serve_forever` return (safe from other threads and signal handlers)."""
        self._stopped = True
        with contextlib.suppress(OSError):
            self._stop_w.send(b"\0")

    def close(self) -> None:
        """Close every client session and the listener."""
        for client in list(self.clients):
            client.close("proxy shutting down")
        for s in (self.sock, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                s.close()
        with contextlib.suppress(Exception):
            self.sel.close()


def run_in_thread(server: ProxyServer) -> threading.Thread:
    """Start ``server`` on a daemon thread (for embedding and tests); returns once it is serving."""
    ready = threading.Event()
    thread = threading.Thread(target=server.serve_forever, args=(ready.set,), daemon=True, name="ws-proxy")
    thread.start()
    ready.wait(5.0)
    return thread
