"""``vpncloud ws-proxy -l ADDR``: run the WebSocket proxy until SIGINT/SIGTERM (spec 16.2)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from vpncloud.core.errors import DecodeError
from vpncloud.core.proxy_framing import DEFAULT_PROXY_PORT
from vpncloud.core.types import format_sockaddr, parse_listen
from vpncloud.daemon.logs import get_logger, setup_logging

from .server import ProxyServer

EXIT_FATAL = 255
EXIT_USAGE = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``ws-proxy`` subcommand's options (the original's: ``-l/--listen``)."""
    p = _Parser(prog="vpncloud ws-proxy", description="Run a websocket proxy")
    p.add_argument(
        "-l",
        "--listen",
        default="3210",
        metavar="LISTEN",
        help="Websocket listen address IP:PORT (default 3210; a bare IP listens on port 8080)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="Print debug information")
    p.add_argument("-q", "--quiet", action="store_true", help="Only print errors and warnings")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point used by ``vpncloud ws-proxy``; returns the exit status."""
    ns = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    log = get_logger()
    if ns.verbose or ns.quiet or not log.handlers:
        log = setup_logging(ns.verbose, ns.quiet)
    try:
        listen = parse_listen(ns.listen, DEFAULT_PROXY_PORT)
    except DecodeError as exc:
        log.error("Invalid listen address: %s", exc)
        return EXIT_FATAL
    try:
        server = ProxyServer(listen)
    except OSError as exc:
        log.error("Failed to listen on %s: %s", format_sockaddr(listen), exc.strerror or exc)
        return EXIT_FATAL

    def stop(_sig: int, _frame: FrameType | None) -> None:
        server.stop()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, stop)
    server.serve_forever()
    log.info("Proxy stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
