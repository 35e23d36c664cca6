"""Control socket of a running node and the ``vpncloud status`` client (ours, not in the original).

Protocol: a client connects to the unix stream socket, sends one JSON line (``{"cmd": "status"}``)
and receives one JSON line (``{"ok": true, "status": {...}}`` or ``{"ok": false, "error": "..."}``),
then the server closes. Requests longer than 4 KiB or not JSON get an error reply; the server never
blocks on a client for long and never crashes on one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from .logs import get_logger

log = get_logger()

DEFAULT_DIR = "/run/vpncloud"
MAX_REQUEST = 4096
#: Client connections kept at once; more are refused so a flood cannot exhaust fds.
MAX_CLIENTS = 16


def default_socket_path(ifname: str) -> str:
    """``/run/vpncloud/<ifname>.sock``."""
    return os.path.join(DEFAULT_DIR, f"{ifname}.sock")


class ControlServer:
    """Non-blocking server; the event loop calls :meth:`on_accept` and :meth:`on_client`."""

    def __init__(self, path: str, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.path = path
        self.handler = handler
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.clients: dict[int, tuple[socket.socket, bytearray]] = {}

    def fileno(self) -> int:
        """The listening fd."""
        return self.sock.fileno()

    def on_accept(self) -> socket.socket | None:
        """Accept one client; returns it so the loop can register it (None if nothing/too many)."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            log.debug("Control socket accept failed: %s", exc)
            return None
        if len(self.clients) >= MAX_CLIENTS:
            conn.close()
            return None
        conn.setblocking(False)
        self.clients[conn.fileno()] = (conn, bytearray())
        return conn

    def on_client(self, conn: socket.socket) -> bool:
        """Read from a client; answer when a line is complete. Returns True when the client is done."""
        entry = self.clients.get(conn.fileno())
        if entry is None:
            return True
        buf = entry[1]
        try:
            chunk = conn.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self._drop(conn)
            return True
        if chunk:
            buf.extend(chunk)
        if b"\n" not in buf and chunk and len(buf) <= MAX_REQUEST:
            return False
        if len(buf) > MAX_REQUEST:
            reply: dict[str, Any] = {"ok": False, "error": "request too long"}
        else:
            reply = self._answer(bytes(buf).split(b"\n", 1)[0])
        self._reply(conn, reply)
        self._discard_input(conn)
        self._drop(conn)
        return True

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return {"ok": False, "error": "malformed request: expected one JSON object per line"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'malformed request: expected {"cmd": "..."}'}
        try:
            return self.handler(request)
        except Exception as exc:  # a bug in one request must not take the node down
            log.error("Control request %r failed: %s", request.get("cmd"), exc)
            return {"ok": False, "error": f"internal error: {exc}"}

    def _reply(self, conn: socket.socket, reply: dict[str, Any]) -> None:
        data = (json.dumps(reply) + "\n").encode()
        # the reply is small (status of one node); a short blocking send keeps this simple
        conn.settimeout(1.0)
        with contextlib.suppress(OSError):
            conn.sendall(data)

    @staticmethod
    def _discard_input(conn: socket.socket) -> None:
        # Closing a unix socket with unread input resets the connection, and the client would lose
        # the reply; read (bounded) what is already queued first.
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            for _ in range(16):
                if not conn.recv(65536):
                    break

    def _drop(self, conn: socket.socket) -> None:
        self.clients.pop(conn.fileno(), None)
        with contextlib.suppress(OSError):
            conn.close()

    def close(self) -> None:
        """Close everything and remove the socket file."""
        for conn, _ in list(self.clients.values()):
            with contextlib.suppress(OSError):
                conn.close()
        self.clients.clear()
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


# --- client ---------------------------------------------------------------------------------------


class ControlError(Exception):
    """The node could not be asked."""


def request(path: str, cmd: str = "status", timeout: float = 5.0) -> dict[str, Any]:
    """Send one request and return the decoded reply."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall((json.dumps({"cmd": cmd}) + "\n").encode())
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except FileNotFoundError:
        raise ControlError(f"no control socket at {path} (is the node running?)") from None
    except OSError as exc:
        raise ControlError(f"cannot talk to {path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(b"".join(chunks).decode())
    except (UnicodeDecodeError, ValueError):
        raise ControlError(f"invalid reply from {path}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"invalid reply from {path}")
    return reply


def status_or_none(path: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The node's status, or None while it does not answer one (not up yet, gone, or refusing):
    for callers that poll a node until it is ready."""
    try:
        reply = request(path, timeout=timeout)
    except ControlError:
        return None
    status = reply.get("status") if reply.get("ok") else None
    return status if isinstance(status, dict) else None


#: Per network namespace: ``<namespace>.sock`` links to the socket of the node running in it (the
#: lab registers its nodes here, since their sockets live in the lab's own state directory).
NETNS_DIR = os.path.join(DEFAULT_DIR, "netns")
NETNS_RUN = "/run/netns"


def current_netns() -> str | None:
    """Name of the named network namespace this process runs in (like ``ip netns identify``)."""
    try:
        own = os.stat("/proc/self/ns/net")
        names = sorted(os.listdir(NETNS_RUN))
    except OSError:
        return None
    for name in names:
        with contextlib.suppress(OSError):
            st = os.stat(os.path.join(NETNS_RUN, name))
            if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
                return name
    return None


def netns_socket_link(namespace: str) -> str:
    """Where the socket of the node in ``namespace`` is registered."""
    return os.path.join(NETNS_DIR, f"{namespace}.sock")


def find_socket(socket_path: str | None, device: str | None) -> str:
    """Explicit path, the instance's default path, the node registered for this network namespace,
    or the only socket in /run/vpncloud."""
    if socket_path:
        return socket_path
    if device:
        return default_socket_path(device)
    namespace = current_netns()
    if namespace is not None and os.path.exists(netns_socket_link(namespace)):
        return os.path.realpath(netns_socket_link(namespace))
    found = sorted(glob.glob(os.path.join(DEFAULT_DIR, "*.sock")))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ControlError(f"no running node found (no socket in {DEFAULT_DIR}); use --socket PATH")
    names = ", ".join(os.path.basename(f)[:-5] for f in found)
    raise ControlError(f"several nodes are running ({names}); choose one with -d IFNAME or --socket PATH")


def status_command(socket_path: str | None, device: str | None, as_json: bool) -> int:
    """``vpncloud status``: JSON for scripts, rich tables for people."""
    try:
        path = find_socket(socket_path, device)
        reply = request(path)
    except ControlError as exc:
        print(f"ERROR - {exc}", file=sys.stderr)
        return 255
    if not reply.get("ok"):
        print(f"ERROR - {reply.get('error', 'unknown error')}", file=sys.stderr)
        return 255
    status = reply.get("status", {})
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print_status(status)
    return 0


def relayed_peers(status: Any) -> dict[str, str]:
    """Node id (hex) of each peer the node reaches through a relay -> the relay's node id, from the
    node's ``status --json``; anything malformed is skipped (the status may come from another host)."""
    relay = status.get("relay") if isinstance(status, dict) else None
    entries = relay.get("relayed_peers") if isinstance(relay, dict) else None
    out: dict[str, str] = {}
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict) and isinstance(e.get("node_id"), str) and isinstance(e.get("relay"), str):
            out[e["node_id"]] = e["relay"]
    return out


def _fmt_bytes(n: Any) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def print_status(status: dict[str, Any]) -> None:
    """Human-readable status with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{status.get('interface', '?')}[/bold]  node {status.get('node_id', '?')}  "
        f"mode {status.get('mode', '?')}/{status.get('device_type', '?')}  "
        f"own addresses: {', '.join(status.get('own_addresses', [])) or '-'}  "
        f"claims: {', '.join(status.get('claims', [])) or '-'}"
    )
    peers = Table(title="Peers")
    for col in ("address", "node id", "algorithm", "connected", "last seen", "claims", "in", "out"):
        peers.add_column(col)
    for p in status.get("peers", []):
        t = p.get("traffic") or {}
        peers.add_row(
            p.get("addr", ""),
            str(p.get("node_id", ""))[:12],
            p.get("algorithm", ""),
            f"{p.get('connected_secs', 0):.0f} s",
            f"{p.get('last_seen_secs', 0):.0f} s ago",
            " ".join(p.get("claims", [])),
            _fmt_bytes(t.get("in_bytes")),
            _fmt_bytes(t.get("out_bytes")),
        )
    console.print(peers)
    relay = status.get("relay") or {}
    for e in relay.get("relayed_peers", []):
        # short lines: the synthetic address means nothing without its relay
        console.print(f"{e.get('addr')} via relay {str(e.get('relay', ''))[:12]}")
    for node_id in relay.get("unreachable", []):
        console.print(f"{str(node_id)[:12]} unreachable: no relay can reach it (retried after a backoff)")
    table = Table(title="Table")
    for col in ("kind", "address", "peer", "ttl"):
        table.add_column(col)
    tbl = status.get("table", {})
    for c in tbl.get("claims", []):
        table.add_row("claim", c.get("range", ""), c.get("peer", ""), f"{c.get('ttl_secs', 0)} s")
    for c in tbl.get("cache", []):
        table.add_row("cache", c.get("addr", ""), c.get("peer", ""), f"{c.get('ttl_secs', 0)} s")
    console.print(table)
    if relay.get("offer"):
        counters = relay.get("counters", {})
        dropped = sum(v for k, v in counters.items() if not k.startswith("forwarded"))
        console.print(
            f"relaying: {relay.get('pairs', 0)} pairs, {counters.get('forwarded_packets', 0)} packets "
            f"({_fmt_bytes(counters.get('forwarded_bytes'))}) forwarded, {dropped} refused"
        )
    traffic = status.get("traffic", {})
    inv = traffic.get("invalid_protocol", {})
    drop = traffic.get("dropped_payload", {})
    console.print(
        f"invalid protocol traffic: {inv.get('packets', 0)} packets, {_fmt_bytes(inv.get('bytes'))}; "
        f"dropped payload: {drop.get('packets', 0)} packets, {_fmt_bytes(drop.get('bytes'))}"
    )
