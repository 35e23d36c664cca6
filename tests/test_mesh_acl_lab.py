"""ACLs from mesh.yaml enforced by real daemons: `vpncloud apply --target lab`, then an ACL change.

The lab's health check pings every node, so the ACL allows ICMP; it allows TCP only to port 22 of b.
A TCP connection from a to b:22 works, to b:8080 it does not; after the ACL also allows 8080 and
apply reloads the nodes (SIGHUP, no restart), it does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpncloud.mesh.cli import main

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

MESH = """\
mesh:
  name: {name}
  vpn_network: 10.97.0.0/24
nodes:
  - {{name: a, host: la, underlay: 10.96.0.1, vpn_address: 10.97.0.1}}
  - {{name: b, host: lb, underlay: 10.96.0.2, vpn_address: 10.97.0.2}}
acl:
  rules:
    - {{from: ["*"], to: ["*"], proto: icmp}}
    - {{from: [a], to: [b], proto: tcp, ports: [{ports}]}}
  tests:
    - "a -> b:22 allowed"
"""

SERVER = """
import socket, sys
srv = []
for port in (22, 8080):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.97.0.2", port)); s.listen(8); srv.append(s)
print("ready", flush=True)
import selectors
sel = selectors.DefaultSelector()
for s in srv: sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept(); conn.sendall(b"hi"); conn.close()
"""

CLIENT = """
import socket, sys
try:
    c = socket.create_connection(("10.97.0.2", int(sys.argv[1])), timeout=2)
    print(c.recv(2).decode())
except OSError as e:
    print("error", e)
"""


@pytest.fixture
def lab_mesh(tmp_path: Path) -> Iterator[tuple[Path, str, Path]]:
    from vpncloud.lab import lab

    name = f"acl{os.getpid() % 100000}"
    lab_dir = tmp_path / "lab"
    try:
        yield tmp_path / "mesh.yaml", name, lab_dir
    finally:
        lab.lab_down(name, lab_dir)


def _connect(ns: str, port: int) -> str:
    res = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, str(port)],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    return res.stdout.strip()


def test_acl_from_mesh_enforced_in_the_lab(lab_mesh: tuple[Path, str, Path], tmp_path: Path) -> None:
    from vpncloud.lab import lab

    mesh_file, name, lab_dir = lab_mesh
    mesh_file.write_text(MESH.format(name=name, ports="22"))
    args = ["--state-dir", str(tmp_path / "state"), "--keystore", str(tmp_path / "keys"), "--no-color",
            "--target", "lab", "--lab-dir", str(lab_dir), "--timeout", "60"]  # fmt: skip
    assert main(["apply", str(mesh_file), *args]) == 0
    status = lab.lab_status(name, lab_dir)
    assert status.whole and status.ping_ok
    ns = {n.name: n.namespace for n in status.nodes}
    pids = {n.name: n.pid for n in status.nodes}
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns["b"], sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert _connect(ns["a"], 22) == "hi"
        assert _connect(ns["a"], 8080).startswith("error")
        mesh_file.write_text(MESH.format(name=name, ports="22, 8080"))
        assert main(["apply", str(mesh_file), *args]) == 0
        assert _connect(ns["a"], 8080) == "hi"
        # reloaded, not restarted
        after = {n.name: n.pid for n in lab.lab_status(name, lab_dir, ping=False).nodes}
        assert after == pids
    finally:
        server.kill()
        server.wait()
