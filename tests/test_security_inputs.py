"""Bad input of every kind gets a clear, short error and an exit status, never a traceback or a hang:
config files, mesh files, command-line flags, the security file and control-socket requests.

Daemon invocations run inside a fresh network namespace: should one unexpectedly start, it can only
create a device there, and the topology teardown kills it.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from reach_support import wait_for

from vpncloud.lab.netns import Topology

PY = sys.executable


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PASSWORD", "PRIVATE_KEY")}


def assert_clean_failure(r: subprocess.CompletedProcess[str], codes: tuple[int, ...] = (1, 255)) -> str:
    out = r.stdout + r.stderr
    assert r.returncode in codes, f"exit {r.returncode}: {out[-2000:]}"
    assert "Traceback" not in out, out
    # argparse prints its (long) usage block first; apart from it, one error line
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]
    assert len(lines) == 1 and "error" in lines[0].lower(), out
    return out


# --- config files ---------------------------------------------------------------------------------

BROKEN_CONFIGS = {
    "bad_yaml": "crypto: {password: [unclosed\n",
    "binary": "\x00\x01\x02\xff\xfe garbage \x7f",
    "wrong_type": "crypto:\n  password: x\nport: [1, 2]\n",
    "unknown_key": "crypto:\n  password: x\nsurprise: true\n",
    "bad_mode": "crypto:\n  password: x\nmode: bridge\n",
    "huge_number": "crypto:\n  password: x\npeer-timeout: 999999999999999999999999\n",
    "bad_claim": "crypto:\n  password: x\nclaims: [10.0.0.0/300]\n",
    "bad_listen": "crypto:\n  password: x\nlisten: 'nonsense::::'\n",
    "bad_key": "crypto:\n  private-key: '!!!'\n",
    "deep_nesting": "a: " + "[" * 2000 + "]" * 2000 + "\n",
    "list_root": "- 1\n- 2\n",
}


@pytest.mark.netns
@pytest.mark.parametrize("name", sorted(BROKEN_CONFIGS))
def test_broken_config_file(topology: Topology, tmp_path: Path, name: str) -> None:
    ns = topology.namespace("cfg")
    path = tmp_path / f"{name}.net"
    path.write_text(BROKEN_CONFIGS[name], encoding="utf-8", errors="surrogateescape")
    r = subprocess.run(
        ns.exec_args([PY, "-m", "vpncloud", "--config", str(path), "--no-port-forwarding"]),
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert_clean_failure(r, (255,))
    assert ns.links() == ["lo"] or all(not link.startswith("vpncloud") for link in ns.links())


@pytest.mark.netns
def test_config_is_a_directory_or_unreadable(topology: Topology, tmp_path: Path) -> None:
    ns = topology.namespace("cfg")
    r = subprocess.run(
        ns.exec_args([PY, "-m", "vpncloud", "--config", str(tmp_path)]),
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert_clean_failure(r, (255,))


# --- command-line flags ---------------------------------------------------------------------------

BAD_FLAGS = [
    ["--mode", "bogus"],
    ["--type", "ethernet"],
    ["--port-that-does-not-exist"],
    ["-p", "x", "--listen", "not an address"],
    ["-p", "x", "--peer-timeout", "-5"],
    ["-p", "x", "--peer-timeout", "99999999999999"],
    ["-p", "x", "--claim", "10.0.0.0/300"],
    ["-p", "x", "--ip", "foo"],
    ["-p", "x", "--algorithm", "rot13"],
    ["-p", "x", "--keepalive", "abc"],
    ["--private-key", "\u00e9\u00e9"],
    ["-p", "x", "--trusted-key", "not-base62!"],
    ["status", "--bogus"],
    ["genkey", "--frobnicate"],
]


@pytest.mark.netns
@pytest.mark.parametrize("flags", BAD_FLAGS, ids=lambda f: " ".join(f))
def test_bad_cli_flags(topology: Topology, flags: list[str]) -> None:
    ns = topology.namespace("cli")
    r = subprocess.run(
        ns.exec_args([PY, "-m", "vpncloud", "--no-port-forwarding", *flags]),
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert_clean_failure(r)


# --- mesh files -----------------------------------------------------------------------------------

GOOD_NODE = "  - {name: a, host: h, underlay: 10.0.0.1, vpn_address: 10.99.0.1}\n"
BROKEN_MESHES = {
    "bad_yaml": "mesh: {name: x\n",
    "binary": "\x00\xff\xfe\x01",
    "empty": "",
    "list_root": "- 1\n",
    "missing_nodes": "mesh: {name: m, vpn_network: 10.99.0.0/24}\n",
    "unknown_key": "mesh: {name: m, vpn_network: 10.99.0.0/24, colour: blue}\nnodes:\n" + GOOD_NODE,
    "bad_network": "mesh: {name: m, vpn_network: 10.99.0.0/99}\nnodes:\n" + GOOD_NODE,
    "outside_network": "mesh: {name: m, vpn_network: 10.98.0.0/24}\nnodes:\n" + GOOD_NODE,
    "duplicate_names": "mesh: {name: m, vpn_network: 10.99.0.0/24}\nnodes:\n" + GOOD_NODE * 2,
    "huge_int": "mesh: {name: m, vpn_network: 10.99.0.0/24, port: 99999999999999999999}\nnodes:\n"
    + GOOD_NODE,
    "deep_nesting": "a: " + "[" * 3000 + "]" * 3000 + "\n",
    "alias_bomb": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
}


@pytest.mark.parametrize("name", sorted(BROKEN_MESHES))
def test_broken_mesh_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(BROKEN_MESHES[name], encoding="utf-8", errors="surrogateescape")
    r = subprocess.run(
        [PY, "-m", "vpncloud", "plan", str(path), "--state-dir", str(tmp_path / "st"),
         "--keystore", str(tmp_path / "ks")],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=tmp_path,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode not in (0, 2) and "Traceback" not in out, out
    assert out.strip(), "no error message"


def test_missing_mesh_file(tmp_path: Path) -> None:
    r = subprocess.run(
        [PY, "-m", "vpncloud", "plan", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=tmp_path,
    )
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out and "none.yaml" in out


# --- control socket -------------------------------------------------------------------------------


def _exchange(path: str, payload: bytes, shutdown: bool = True) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    try:
        try:
            s.sendall(payload)
            if shutdown:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            # The server may answer an oversized request and close before reading all of it.
            pass
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        s.close()


@pytest.mark.netns
def test_control_socket_garbage(topology: Topology, tmp_path: Path) -> None:
    ns = topology.node("n", "10.203.0.1/24")
    sock = str(tmp_path / "n.sock")
    log = tmp_path / "n.log"
    with open(log, "wb") as out:
        proc = topology.spawn(
            ns,
            [PY, "-m", "vpncloud", "-v", "-p", "control-test", "--no-port-forwarding",
             "--ip", "10.111.0.1/24", "--control-socket", sock],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )  # fmt: skip
    wait_for(lambda: os.path.exists(sock), interval=0.1, what="control socket")
    rnd = random.Random(5)
    cases: list[tuple[bytes, bool]] = [
        (b"", True),
        (b"\n", True),
        (b"not json\n", True),
        (b"[1, 2, 3]\n", True),
        (b'{"cmd": 5}\n', True),
        (b'{"cmd": "rm -rf /"}\n', True),
        (b'{"cmd": "status"', True),  # no newline, then EOF
        (b"\xff\xfe\x00\x01" * 100 + b"\n", True),
        (rnd.randbytes(4096), True),
        (b"x" * 200_000, True),  # longer than any request
        (b"[" * 2000 + b"]" * 2000 + b"\n", True),  # deep nesting within the size limit
        (b'{"cmd": "status", "extra": {"deep": ' + b"[" * 5000 + b"]" * 5000 + b"}}\n", True),
    ]
    for payload, shut in cases:
        reply = _exchange(sock, payload, shut)
        assert reply.endswith(b"\n"), (payload[:40], reply)
        answer = json.loads(reply)
        assert isinstance(answer, dict) and "ok" in answer
        if not answer["ok"]:
            assert isinstance(answer["error"], str) and "\n" not in answer["error"]
    # a client that connects and says nothing does not block others
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(sock)
    try:
        ok = json.loads(_exchange(sock, b'{"cmd": "status"}\n'))
        assert ok["ok"] is True
    finally:
        idle.close()
    assert proc.poll() is None, "the daemon died"
    proc.terminate()
    assert proc.wait(timeout=20) == 0
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "control-test" not in text
