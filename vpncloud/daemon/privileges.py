"""Privilege drop, daemonizing and systemd readiness (spec 20.2, 20.3).

All three run after the device, socket and stats file exist, so the unprivileged process keeps its
open fds but cannot create new devices.

The original keeps no privilege at all after ``--user``. Ours programs kernel routes for claims
that arrive later (TUN router mode), so in that case it keeps exactly one capability,
``CAP_NET_ADMIN``, in its effective and permitted sets and nothing else; ``--no-routes`` (or any
mode without routes) drops everything as the original does. Programs it starts (hooks, beacon
commands) do not inherit it: capabilities of a non-root process are cleared on ``execve``.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import os
import pwd
import socket
import sys

from .logs import get_logger

log = get_logger()


class PrivilegeError(Exception):
    """A user/group that does not exist or cannot be switched to."""


def lookup(user: str | None, group: str | None) -> tuple[int | None, int | None, str | None]:
    """(uid, gid, user name) for the names; the gid defaults to the user's primary group."""
    uid = gid = None
    name = None
    if user is not None:
        try:
            pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        except KeyError:
            raise PrivilegeError(f"Unknown user {user!r}") from None
        uid, gid, name = pw.pw_uid, pw.pw_gid, pw.pw_name
    if group is not None:
        try:
            gid = (grp.getgrnam(group) if not group.isdigit() else grp.getgrgid(int(group))).gr_gid
        except KeyError:
            raise PrivilegeError(f"Unknown group {group!r}") from None
    return uid, gid, name


CAP_NET_ADMIN = 12
_PR_SET_KEEPCAPS = 8
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc_check(result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _set_capabilities(caps: int) -> None:
    """Effective = permitted = ``caps`` (a bit mask of capability numbers < 64), inheritable empty."""
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        word = (caps >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
    _libc_check(ctypes.CDLL(None, use_errno=True).capset(ctypes.byref(header), data))


def _keep_capabilities_over_setuid(keep: bool) -> None:
    _libc_check(ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_KEEPCAPS, int(keep), 0, 0, 0))


def drop_privileges(user: str | None, group: str | None, keep_net_admin: bool = False) -> None:
    """Set supplementary groups, gid, then uid (in that order: after setuid the rest is impossible).

    With ``keep_net_admin`` (and a new uid), ``CAP_NET_ADMIN`` survives the switch and every other
    capability is dropped; without it the process ends with none, as the original."""
    uid, gid, name = lookup(user, group)
    keep = keep_net_admin and uid is not None and uid != 0
    try:
        if gid is not None:
            if name is not None:
                os.initgroups(name, gid)
            else:
                os.setgroups([gid])
            os.setgid(gid)
        if uid is not None:
            if keep:
                _keep_capabilities_over_setuid(True)
            os.setuid(uid)
            if keep:
                _keep_capabilities_over_setuid(False)
                _set_capabilities(1 << CAP_NET_ADMIN)
    except OSError as exc:
        raise PrivilegeError(f"Failed to drop privileges: {exc.strerror}") from None
    kept = ", keeping CAP_NET_ADMIN for the routes of claims" if keep else ""
    log.info("Dropped privileges to user %s, group %s%s", user or "-", group or "-", kept)


def daemonize(
    pid_file: str | None, user: str | None, group: str | None, keep_net_admin: bool = False
) -> None:
    """Double fork, setsid, cwd /, umask 027, std fds to /dev/null, pid file, privilege drop."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    os.umask(0o027)
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    if pid_file:
        with open(pid_file, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        uid, gid, _ = lookup(user, group)
        with contextlib.suppress(OSError):
            os.chown(pid_file, uid if uid is not None else -1, gid if gid is not None else -1)
    if user is not None or group is not None:
        drop_privileges(user, group, keep_net_admin)


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to ``$NOTIFY_SOCKET`` if systemd asked for it."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
        return False
