"""Network-namespace plumbing for tests and the local lab.

A small, typed wrapper around iproute2 (``ip``), ``sysctl`` and ``iptables``, all run through
``subprocess`` so that every step is visible and reproducible on a shell. Everything it creates lives
inside network namespaces; the host's own interfaces, routes and firewall are never touched.

Typical use::

    with Topology() as topo:                      # unique prefix per run, e.g. "vc3fa2b1-"
        sw = topo.switch()                        # namespace "<prefix>sw" holding bridge "br0"
        a = topo.node("a", "10.77.0.1/24", "fd77::1/64")   # namespace + veth "eth0" on the bridge
        b = topo.node("b", "10.77.0.2/24")
        assert a.ping("10.77.0.2")
        proc = topo.spawn(b, ["sleep", "60"])     # killed when the context ends
    # all processes killed, all namespaces deleted -- also on exceptions, SIGINT and SIGTERM

Names: namespace names are ``<prefix><short>``; the prefix is random per run (``new_prefix()``) so
parallel runs and leftovers never collide. Interface names are per namespace, so they only need to be
unique inside one namespace (and shorter than 16 characters, the kernel's ``IFNAMSIZ``).

Leftovers of a crashed run are removed with ``cleanup_stale(prefix)``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

__all__ = [
    "DEFAULT_PREFIX_BASE",
    "IFNAMSIZ",
    "Netns",
    "NetnsError",
    "SignalGuard",
    "Topology",
    "cleanup_stale",
    "create_netns",
    "delete_netns",
    "kill_pids",
    "list_netns",
    "netns_pids",
    "new_prefix",
    "requirements_missing",
    "run",
    "signals_deferred",
]

#: Kernel limit for interface names, including the terminating NUL.
IFNAMSIZ = 16
#: Every prefix made by :func:`new_prefix` starts with this, so ``cleanup_stale(DEFAULT_PREFIX_BASE)``
#: finds leftovers of all test runs.
DEFAULT_PREFIX_BASE = "vc"
#: Where iproute2 looks for per-namespace /etc files (bind-mounted by "ip netns exec").
NETNS_ETC = Path("/etc/netns")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class NetnsError(RuntimeError):
    """A namespace operation failed; the message names the command and its stderr."""


def new_prefix(base: str = DEFAULT_PREFIX_BASE) -> str:
    """Return a fresh namespace prefix like ``vc3fa2b1-`` (random, so parallel runs never collide)."""
    return f"{base}{secrets.token_hex(3)}-"


def _check_name(name: str, what: str = "namespace name") -> str:
    if not _NAME_RE.match(name):
        raise NetnsError(f"invalid {what} {name!r} (letters, digits, '_', '.', '-'; at most 64 chars)")
    return name


def _check_ifname(name: str) -> str:
    # The kernel silently rejects longer names with a confusing "Numerical result out of range".
    if len(name) >= IFNAMSIZ or not _IFNAME_RE.match(name):
        raise NetnsError(f"invalid interface name {name!r} (at most {IFNAMSIZ - 1} chars)")
    return name


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command on the host side, capturing text output.

    Raises :class:`NetnsError` (with the command line and its stderr) if ``check`` and the command
    fails, if it does not exist, or if it exceeds ``timeout`` seconds.
    """
    try:
        res = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except FileNotFoundError as e:
        raise NetnsError(f"command not found: {args[0]}") from e
    except subprocess.TimeoutExpired as e:
        raise NetnsError(f"command timed out after {timeout} s: {' '.join(args)}") from e
    if check and res.returncode != 0:
        raise NetnsError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def requirements_missing() -> list[str]:
    """What this machine lacks for namespace tests: root, /dev/net/tun, ``ip`` (empty list = all fine)."""
    import shutil

    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    if shutil.which("ip") is None:
        missing.append("ip (iproute2)")
    return missing


def list_netns() -> list[str]:
    """Names of all named network namespaces (those under /run/netns)."""
    res = run(["ip", "netns", "list"], check=False)
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def netns_pids(name: str) -> list[int]:
    """Pids of all processes running inside namespace ``name`` (empty if it does not exist)."""
    res = run(["ip", "netns", "pids", name], check=False)
    return [int(tok) for tok in res.stdout.split() if tok.isdigit()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pids(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM ``pids``, wait up to ``grace`` seconds, then SIGKILL what is left and wait for it."""
    pids = [p for p in pids if p > 1 and p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        _reap(pids)
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        _reap(pids)
        time.sleep(0.05)
    _reap(pids)


def _reap(pids: Sequence[int]) -> None:
    # Those of them that are our own children stay zombies until waited for; reap only these pids
    # (never waitpid(-1), which would steal exit codes from other code's Popen objects).
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def create_netns(name: str) -> Netns:
    """Create namespace ``name`` with its loopback up; :class:`NetnsError` if it already exists."""
    _check_name(name)
    if name in list_netns():
        raise NetnsError(f"network namespace {name!r} already exists")
    run(["ip", "netns", "add", name])
    ns = Netns(name)
    ns.ip("link", "set", "lo", "up")
    return ns


def delete_netns(name: str, grace: float = 3.0) -> None:
    """Kill every process inside namespace ``name``, then delete it. A missing namespace is fine."""
    kill_pids(netns_pids(name), grace)
    if name in list_netns():
        run(["ip", "netns", "delete", name], check=False)
    # "ip netns delete" can fail transiently while the last process is still exiting; retry briefly.
    deadline = time.monotonic() + 5.0
    while name in list_netns() and time.monotonic() < deadline:
        kill_pids(netns_pids(name), 0.5)
        run(["ip", "netns", "delete", name], check=False)
        time.sleep(0.1)
    if name in list_netns():
        raise NetnsError(f"could not delete network namespace {name!r}")
    # Per-namespace files that "ip netns exec" bind-mounts over /etc (e.g. a hosts file of ours).
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


def write_netns_etc(name: str, filename: str, text: str) -> Path:
    """A file that ``ip netns exec NAME`` shows as ``/etc/FILENAME`` inside the namespace."""
    path = NETNS_ETC / name / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cleanup_stale(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with ``prefix`` (and kill its processes).

    For leftovers of crashed runs. Returns the names deleted. An empty prefix is refused, so this can
    never wipe namespaces that are not ours.
    """
    if not prefix:
        raise NetnsError("cleanup_stale needs a non-empty prefix")
    gone = []
    for name in list_netns():
        if name.startswith(prefix):
            delete_netns(name)
            gone.append(name)
    return gone


class Netns:
    """A handle on one named network namespace. Cheap; holds only the name."""

    def __init__(self, name: str) -> None:
        self.name = _check_name(name)

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    # --- commands -------------------------------------------------------------------------------
    def exec_args(self, args: Sequence[str]) -> list[str]:
        """The argv that runs ``args`` inside this namespace (``ip netns exec NAME ...``)."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it (see :func:`run`)."""
        return run(self.exec_args(args), check=check, timeout=timeout, input=input)

    def popen(
        self,
        args: Sequence[str],
        *,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        detach: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start a long-lived process inside the namespace.

        ``ip netns exec`` execs the command, so the returned pid is the command's own pid. With
        ``detach`` the process gets its own session (no terminal SIGINT/SIGHUP from ours), so it
        survives the caller exiting. Stdin is always /dev/null.
        """
        return subprocess.Popen(
            self.exec_args(args),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=detach,
        )

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ip -n NAME ARGS...``."""
        return run(["ip", "-n", self.name, *args], check=check)

    # --- links, addresses, routes ---------------------------------------------------------------
    def link_up(self, ifname: str) -> None:
        """Set interface ``ifname`` up."""
        self.ip("link", "set", _check_ifname(ifname), "up")

    def add_bridge(self, ifname: str = "br0") -> None:
        """Create a Linux bridge ``ifname`` in this namespace and set it up."""
        # STP off and forward delay 0: ports forward immediately, no 30 s learning phase in tests.
        self.ip(
            "link", "add", _check_ifname(ifname), "type", "bridge", "stp_state", "0", "forward_delay", "0"
        )
        self.link_up(ifname)

    def attach_to_bridge(self, ifname: str, bridge: str = "br0") -> None:
        """Make ``ifname`` a port of ``bridge`` (both in this namespace) and set it up."""
        self.ip("link", "set", _check_ifname(ifname), "master", _check_ifname(bridge))
        self.link_up(ifname)

    def add_addr(self, ifname: str, cidr: str) -> None:
        """Add an address (``10.0.0.1/24`` or ``fd00::1/64``) to ``ifname``.

        IPv6 addresses get ``nodad`` so they are usable at once (no duplicate address detection
        delay, which would make tests flaky).
        """
        extra = ["nodad"] if ":" in cidr else []
        self.ip("addr", "add", cidr, "dev", _check_ifname(ifname), *extra)

    def add_route(self, dst: str, *, via: str | None = None, dev: str | None = None) -> None:
        """Add a route; ``dst`` may be ``default``. IPv6 is chosen by a ``:`` in ``dst`` or ``via``."""
        v6 = ":" in dst or (via is not None and ":" in via)
        args = ["-6"] if v6 else ["-4"]
        args += ["route", "add", dst]
        if via:
            args += ["via", via]
        if dev:
            args += ["dev", _check_ifname(dev)]
        if not via and not dev:
            raise NetnsError("add_route needs via or dev")
        self.ip(*args)

    def add_default_route(self, dev: str, v6: bool = False) -> None:
        """A default route straight out of ``dev`` (on-link, no gateway).

        The lab underlay is one flat LAN without a router; the route still matters because the
        daemon finds its own address through a route lookup.
        """
        self.ip("-6" if v6 else "-4", "route", "add", "default", "dev", _check_ifname(dev))

    def addresses(self, ifname: str | None = None) -> list[str]:
        """Global addresses (``addr/len``) in this namespace, optionally of one interface."""
        args = ["-o", "addr", "show", "scope", "global"]
        if ifname:
            args += ["dev", ifname]
        res = self.ip(*args, check=False)
        out = []
        for line in res.stdout.splitlines():
            parts = line.split()
            for i, p in enumerate(parts):
                if p in ("inet", "inet6") and i + 1 < len(parts):
                    out.append(parts[i + 1])
        return out

    def links(self) -> list[str]:
        """Names of all interfaces in this namespace."""
        res = self.ip("-o", "link", "show", check=False)
        names = []
        for line in res.stdout.splitlines():
            parts = line.split(":", 2)
            if len(parts) >= 2:
                names.append(parts[1].strip().split("@", 1)[0])
        return names

    # --- sysctl, firewall, probes ---------------------------------------------------------------
    def sysctl(self, key: str, value: str | int) -> None:
        """Set a (per-namespace) sysctl, e.g. ``net.ipv6.conf.all.disable_ipv6``."""
        # Write /proc/sys directly: no dependency on procps' sysctl binary.
        if not re.match(r"^[A-Za-z0-9_.\-/]+$", key) or ".." in key:
            raise NetnsError(f"invalid sysctl key {key!r}")
        path = "/proc/sys/" + key.replace(".", "/")
        self.run(["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", str(value), path])

    def read_sysctl(self, key: str) -> str:
        """Read a sysctl value inside this namespace."""
        path = "/proc/sys/" + key.replace(".", "/")
        return self.run(["cat", path]).stdout.strip()

    def iptables(self, *args: str, v6: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``iptables ARGS`` (or ``ip6tables``) inside this namespace, e.g. NAT rules."""
        return self.run(["ip6tables" if v6 else "iptables", *args])

    def ping(self, addr: str, *, count: int = 1, timeout: float = 1.0) -> bool:
        """Whether ``addr`` answers ``count`` ping(s) from this namespace within ``timeout`` s each."""
        wait = str(max(1, round(timeout)))
        res = self.run(
            ["ping", "-n", "-q", "-c", str(count), "-W", wait, addr],
            check=False,
            timeout=count * timeout + 5,
        )
        return res.returncode == 0

    def exists(self) -> bool:
        """Whether this namespace still exists."""
        return self.name in list_netns()


class SignalGuard:
    """While active, SIGTERM (and SIGINT) raise KeyboardInterrupt in the main thread.

    SIGINT already does that by default; SIGTERM would otherwise end the interpreter without running
    ``__exit__``, leaving namespaces behind.
    """

    def __init__(self) -> None:
        self._old: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            old = signal.getsignal(sig)
            # Respect a handler somebody else installed on purpose (e.g. pytest's or the lab CLI's).
            if old in (signal.SIG_DFL, signal.default_int_handler, None):
                self._old[sig] = old
                signal.signal(sig, self._raise)

    @staticmethod
    def _raise(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM during teardown so a second Ctrl-C cannot leave half-deleted state."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, signal.SIG_IGN)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Topology:
    """A set of namespaces, links and processes that is torn down as a whole.

    Use as a context manager (or call :meth:`close`). Teardown kills the processes started with
    :meth:`spawn`, then every process left inside the namespaces, then deletes the namespaces (which
    removes their veths and bridges). It runs on normal exit, exceptions, SIGINT and SIGTERM, and is
    idempotent.
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix if prefix is not None else new_prefix()
        _check_name(self.prefix + "x", "namespace prefix")
        self.namespaces: dict[str, Netns] = {}
        self.processes: list[subprocess.Popen[bytes]] = []
        self._guard = SignalGuard()
        self._closed = False

    def __enter__(self) -> Topology:
        self._guard.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        finally:
            self._guard.__exit__()

    # --- building -------------------------------------------------------------------------------
    def namespace(self, short: str) -> Netns:
        """Create namespace ``<prefix><short>`` (tracked for teardown) and return it."""
        if short in self.namespaces:
            raise NetnsError(f"namespace {short!r} already in this topology")
        ns = create_netns(self.prefix + short)
        self.namespaces[short] = ns
        return ns

    def __getitem__(self, short: str) -> Netns:
        return self.namespaces[short]

    def switch(self, short: str = "sw", bridge: str = "br0") -> Netns:
        """A dedicated namespace holding a Linux bridge: the LAN the nodes plug into."""
        ns = self.namespace(short)
        ns.add_bridge(bridge)
        return ns

    def veth(self, ns_a: Netns, if_a: str, ns_b: Netns, if_b: str) -> None:
        """A veth pair: ``if_a`` in ``ns_a`` and ``if_b`` in ``ns_b``, both up."""
        _check_ifname(if_a)
        _check_ifname(if_b)
        # Create both ends directly in their namespaces: no temporary interface on the host.
        ns_a.ip("link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b.name)
        ns_a.link_up(if_a)
        ns_b.link_up(if_b)

    def plug(
        self, ns: Netns, switch: Netns, *, ifname: str = "eth0", port: str | None = None, bridge: str = "br0"
    ) -> None:
        """Connect ``ns`` to the bridge in ``switch`` with a veth (``ifname`` in ``ns``).

        The switch-side port is named ``port`` (default ``p-<short name>``).
        """
        short = ns.name[len(self.prefix) :] if ns.name.startswith(self.prefix) else ns.name
        port = port or ("p-" + short)[: IFNAMSIZ - 1]
        self.veth(ns, ifname, switch, port)
        switch.attach_to_bridge(port, bridge)

    def node(
        self,
        short: str,
        *addrs: str,
        switch: str = "sw",
        ifname: str = "eth0",
        default_route: bool = True,
    ) -> Netns:
        """A node namespace plugged into ``switch`` with ``addrs`` on ``ifname``.

        Creates the switch (with bridge ``br0``) on first use. With ``default_route`` it adds an
        on-link default route for each address family present.
        """
        sw = self.namespaces.get(switch) or self.switch(switch)
        ns = self.namespace(short)
        self.plug(ns, sw, ifname=ifname)
        for a in addrs:
            ns.add_addr(ifname, a)
        if default_route:
            if any(":" not in a for a in addrs):
                ns.add_default_route(ifname)
            if any(":" in a for a in addrs):
                ns.add_default_route(ifname, v6=True)
        return ns

    def spawn(self, ns: Netns, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process in ``ns`` (see :meth:`Netns.popen`); it is killed at teardown."""
        proc = ns.popen(args, **kwargs)
        self.processes.append(proc)
        return proc

    # --- teardown -------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill processes and delete all namespaces of this topology. Idempotent."""
        if self._closed:
            return
        with signals_deferred():
            errors = []
            for proc in self.processes:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.terminate()
            deadline = time.monotonic() + 3.0
            for proc in self.processes:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=5)
            for ns in reversed(list(self.namespaces.values())):
                try:
                    delete_netns(ns.name)
                except NetnsError as e:
                    errors.append(str(e))
            self._closed = True
            if errors:
                raise NetnsError("; ".join(errors))
