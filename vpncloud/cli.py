"""The ``vpncloud`` command line (spec 14.3, 14.4).

``vpncloud [FLAGS]`` runs a node; subcommands: ``genkey`` (``gen-key``), ``ws-proxy`` (``wsproxy``),
``migrate-config`` (``migrate``), ``completion``, ``config``, ``status``, and the dispatch of ``lab`` and
of the mesh orchestrator's ``plan``/``apply``/``rotate``/``schema``. Global ``-v``/``-q`` may precede a
subcommand.

Every error ends as one line on stderr/stdout and an exit status, never a traceback: fatal errors exit
255 like the original's ``exit(-1)``, usage errors 1 (clap's status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vpncloud.config import (
    VERSION_TEXT,
    Config,
    ConfigError,
    add_run_arguments,
    add_verbosity,
    check_arg_conflicts,
    config_from_args,
    migrate_config_file,
)

EXIT_FATAL = 255
EXIT_USAGE = 1

#: Subcommands implemented by other packages: name -> (module, passes the subcommand name along).
EXTERNAL = {
    "lab": ("vpncloud.lab.cli", False),
    "plan": ("vpncloud.mesh.cli", True),
    "apply": ("vpncloud.mesh.cli", True),
    "rotate": ("vpncloud.mesh.cli", True),
    "schema": ("vpncloud.mesh.cli", True),
    "destroy": ("vpncloud.mesh.cli", True),
    "ws-proxy": ("vpncloud.proxy.cli", False),
    "wsproxy": ("vpncloud.proxy.cli", False),
}
GLOBAL_FLAGS = ("-v", "--verbose", "-q", "--quiet")


class _Parser(argparse.ArgumentParser):
    """argparse that exits with clap's usage status instead of 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: run flags plus every subcommand (also used for shell completion)."""
    p = _Parser(prog="vpncloud", description="Peer-to-peer VPN")
    add_verbosity(p)
    add_run_arguments(p)
    p.add_argument("--version", action="version", version=VERSION_TEXT, help="Print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)

    g = sub.add_parser("genkey", aliases=["gen-key"], help="Generate and print a key-pair")
    add_verbosity(g, suppress=True)
    g.add_argument("-p", "--password", metavar="PASSWORD", help="The shared password (env PASSWORD)")

    m = sub.add_parser("migrate-config", aliases=["migrate"], help="Migrate an old config file")
    add_verbosity(m, suppress=True)
    m.add_argument("--config-file", required=True, metavar="FILE", help="Config file to migrate")

    c = sub.add_parser("completion", help="Generate shell completions")
    add_verbosity(c, suppress=True)
    c.add_argument("--shell", default="bash", choices=("bash", "zsh", "fish"), help="Shell (default bash)")

    w = sub.add_parser("config", help="Interactively create or edit a network config file")
    add_verbosity(w, suppress=True)
    w.add_argument("-n", "--name", metavar="NAME", help="Name of the network (file DIR/NAME.net)")
    w.add_argument(
        "--dir", default="/etc/vpncloud", metavar="DIR", help="Config directory (default /etc/vpncloud)"
    )

    s = sub.add_parser("status", help="Show the status of a running node (control socket)")
    add_verbosity(s, suppress=True)
    s.add_argument("--json", action="store_true", help="Print JSON for scripts")
    s.add_argument("--socket", metavar="PATH", help="Control socket path")
    s.add_argument("-d", "--device", metavar="IFNAME", help="Interface name of the instance")

    sub.add_parser("ws-proxy", aliases=["wsproxy"], help="Run a websocket proxy", add_help=False)
    sub.add_parser("lab", help="Run a local lab mesh in network namespaces", add_help=False)
    for name in ("plan", "apply", "rotate", "schema", "destroy"):
        sub.add_parser(name, help=f"Mesh orchestrator: {name}", add_help=False)
    return p


def _split_globals(argv: list[str]) -> tuple[list[str], list[str]]:
    i = 0
    while i < len(argv) and argv[i] in GLOBAL_FLAGS:
        i += 1
    return argv[:i], argv[i:]


def _dispatch_external(name: str, rest: list[str]) -> int:
    module_name, with_name = EXTERNAL[name]
    try:
        module = importlib.import_module(module_name)
        entry = module.main
    except (ImportError, AttributeError):
        print(f"ERROR - The '{name}' subcommand is not available in this installation", file=sys.stderr)
        return EXIT_FATAL
    result = entry([name, *rest] if with_name else rest)
    return int(result or 0)


def _dispatch_mesh_status(rest: list[str]) -> int:
    from vpncloud.mesh.cli import main as mesh_main

    return mesh_main(["status", *rest])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vpncloud`` script and ``python -m vpncloud``."""
    args = list(sys.argv[1:] if argv is None else argv)
    globals_, rest = _split_globals(args)
    if rest[:1] == ["status"] and any(a.endswith((".yaml", ".yml")) for a in rest[1:]):
        # "vpncloud status MESH": the mesh's health, not one node's control socket.
        return _dispatch_mesh_status(rest[1:])
    if rest and rest[0] in EXTERNAL:
        from vpncloud.daemon.logs import setup_logging

        setup_logging(verbose="-v" in globals_ or "--verbose" in globals_, quiet="-q" in globals_)
        try:
            return _dispatch_external(rest[0], rest[1:])
        except KeyboardInterrupt:
            return 130

    parser = build_parser()
    ns = parser.parse_args(args)
    try:
        return _run_command(parser, ns, args)
    except ConfigError as exc:
        print(f"ERROR - {exc}")
        return EXIT_FATAL
    except KeyboardInterrupt:
        return 130


def _run_command(parser: argparse.ArgumentParser, ns: argparse.Namespace, argv: list[str]) -> int:
    import os

    from vpncloud.daemon.logs import setup_logging

    cmd = ns.command
    if cmd in ("genkey", "gen-key"):
        from vpncloud.core.identity import genkey_text
        from vpncloud.core.primitives import SystemRng

        password = ns.password if ns.password is not None else os.environ.get("PASSWORD")
        sys.stdout.write(genkey_text(password or None, SystemRng()))
        return 0
    if cmd in ("migrate-config", "migrate"):
        log = setup_logging(ns.verbose, ns.quiet)
        migrate_config_file(ns.config_file, warn=log.warning)
        log.info("Config file %s migrated (old file kept as %s.orig)", ns.config_file, ns.config_file)
        return 0
    if cmd == "completion":
        from vpncloud.daemon.completion import completion_script

        sys.stdout.write(completion_script(parser, ns.shell))
        return 0
    if cmd == "config":
        from vpncloud.wizard import run_config_command

        return run_config_command(ns.name, ns.dir)
    if cmd == "status":
        from vpncloud.daemon.control import status_command

        return status_command(socket_path=ns.socket, device=ns.device, as_json=ns.json)

    # no subcommand: run a node (spec 14.5)
    check_arg_conflicts(ns, argv)
    log = setup_logging(ns.verbose, ns.quiet, ns.log_file)
    config = config_from_args(ns, warn=log.warning)
    from vpncloud.daemon.loop import run_daemon

    def reload() -> Config:
        # SIGHUP: the same file and flags again, so flag values keep overriding the file
        return config_from_args(ns, warn=log.warning)

    return run_daemon(config, reload)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
