"""Stats file, statsd datagram and beacon store/load I/O (spec 15.6, 18).

The texts themselves come from the core (``StatsDue``, ``BeaconStore``); this module only writes,
sends and runs commands.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Callable

from vpncloud.core.beacon import markers
from vpncloud.core.types import SocketAddr

from .logs import get_logger
from .udp import UdpSocket, resolve

log = get_logger()


def create_stats_file(path: str) -> None:
    """Delete, create and chmod 0644 at startup (spec 14.5 step 8)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.close(fd)
    os.chmod(path, 0o644)


class StatsFile:
    """The stats file, created at startup and kept open.

    Keeping the fd means the periodic rewrite still works after the privilege drop, even when the
    unprivileged user could not open the path itself (a root-only directory, say).
    """

    def __init__(self, path: str) -> None:
        create_stats_file(path)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def write(self, text: str) -> None:
        """Truncate and rewrite; errors are logged."""
        try:
            data = text.encode()
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, data, 0)
        except OSError as exc:
            log.error("Failed to write stats file %s: %s", self.path, exc.strerror)

    def close(self) -> None:
        """Close the fd (the file stays)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def write_stats_file(path: str, text: str) -> None:
    """Truncate and rewrite by path (the file keeps its mode)."""
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        log.error("Failed to write stats file %s: %s", path, exc.strerror)


def send_statsd(sock: UdpSocket, server: str, text: str) -> bool:
    """One datagram from the VPN socket to the first resolved address of ``server`` (resolved each time)."""
    try:
        addrs = resolve(server, 8125)
    except OSError as exc:
        log.error("Failed to resolve statsd server %s: %s", server, exc)
        return False
    if not addrs:
        return False
    return sock.send(text.encode(), addrs[0])


# --- beacons --------------------------------------------------------------------------------------


def store_beacon(target: str, beacon: str, password: str) -> threading.Thread | None:
    """File (deleted, written with a newline, 0444) or ``|command`` with begin/data/end/beacon env."""
    if target.startswith("|"):
        begin, end = markers(password)
        data = beacon[len(begin) : len(beacon) - len(end)] if beacon.startswith(begin) else beacon
        env = {**os.environ, "begin": begin, "data": data, "end": end, "beacon": beacon}
        return _spawn(target[1:], env, "Beacon store command", None)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
        with os.fdopen(fd, "w") as fh:
            fh.write(beacon + "\n")
        os.chmod(target, 0o444)
    except OSError as exc:
        log.error("Failed to store beacon in %s: %s", target, exc.strerror)
    return None


def load_beacon(source: str, password: str, on_text: Callable[[str], None]) -> threading.Thread | None:
    """Read the file now (calling ``on_text``), or run ``|command`` and call ``on_text`` from its thread."""
    if source.startswith("|"):
        begin, end = markers(password)
        env = {**os.environ, "begin": begin, "end": end}
        return _spawn(source[1:], env, "Beacon load command", on_text)
    try:
        with open(source, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        log.error("Failed to load beacon from %s: %s", source, exc.strerror)
        return None
    on_text(text)
    return None


def remove_beacon_file(target: str | None) -> None:
    """At shutdown the store file is deleted (spec 10.6)."""
    if target and not target.startswith("|"):
        with contextlib.suppress(OSError):
            os.unlink(target)


def _spawn(
    command: str, env: dict[str, str], what: str, on_text: Callable[[str], None] | None
) -> threading.Thread:
    def work() -> None:
        try:
            result = subprocess.run(
                ["sh", "-c", command], env=env, capture_output=True, stdin=subprocess.DEVNULL, check=False
            )
        except OSError as exc:
            log.error("%s failed to start: %s", what, exc)
            return
        if result.returncode != 0:
            log.error(
                "%s failed with exit code %d: %s",
                what,
                result.returncode,
                result.stderr.decode(errors="replace").strip(),
            )
            return
        if on_text is not None:
            on_text(result.stdout.decode(errors="replace"))

    thread = threading.Thread(target=work, daemon=True, name="beacon-command")
    thread.start()
    return thread


def beacon_addresses(text: str, password: str, now_hour: int) -> list[SocketAddr]:
    """Decode every beacon in ``text`` (never raises)."""
    from vpncloud.core.beacon import DEFAULT_TTL_HOURS, decode_beacon

    return decode_beacon(text, password, DEFAULT_TTL_HOURS, now_hour)
