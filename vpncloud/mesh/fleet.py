"""What a fleet's hosts run, read through Ansible itself (``playbooks/refresh.yml``).

The read is Ansible's job, not ours: the same inventory, connection settings and forks as a rollout,
in check mode, so it cannot change a host. Each reachable host writes one JSON file of facts to a
directory on the controller (config checksum, unit state, ``vpncloud status --json``); a host that
cannot be reached writes none and is reported with Ansible's reason. This module runs the playbook and
turns those files into :class:`HostFacts`; deciding what differs from the mesh file is the plan's job.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FleetReadError", "HostFacts", "parse_facts", "read_fleet"]


class FleetReadError(Exception):
    """ansible-playbook could not run at all (not: a host was unreachable, which is a fact)."""


@dataclass(frozen=True)
class HostFacts:
    """One inventory host as Ansible found it."""

    host: str
    reachable: bool
    #: why the host could not be read (unreachable, or a task failed); None when it was read
    error: str | None = None
    node: str | None = None
    config_exists: bool = False
    config_sha256: str | None = None
    config_mode: str | None = None
    unit_managed: bool = False
    #: systemd's UnitFileState ("enabled", "disabled", ...) and ActiveState ("active", "inactive", ...)
    unit_file_state: str | None = None
    unit_active: str | None = None
    #: the node's ``vpncloud status --json`` (no secrets in it), None when the node did not answer
    status: dict[str, Any] | None = None
    status_error: str | None = None

    @property
    def running(self) -> bool:
        return self.status is not None


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def parse_facts(host: str, data: dict[str, Any]) -> HostFacts:
    """One facts file (written by ``roles/node/tasks/facts.yml``) as :class:`HostFacts`."""
    config = data.get("config") or {}
    unit = data.get("unit") or {}
    status = data.get("status")
    return HostFacts(
        host=host,
        reachable=True,
        node=_text(data.get("node")),
        config_exists=bool(config.get("exists")),
        config_sha256=_text(config.get("sha256")),
        config_mode=_text(config.get("mode")),
        unit_managed=bool(unit.get("managed")),
        unit_file_state=_text(unit.get("file_state")),
        unit_active=_text(unit.get("active")),
        status=status if isinstance(status, dict) else None,
        status_error=_text(data.get("status_error")),
    )


def _failures(output: str) -> tuple[dict[str, str], set[str]]:
    """Per-host failure messages and the set of unreachable hosts, from the JSON callback's output."""
    try:
        report = json.loads(output[output.index("{") :])
    except ValueError:
        return {}, set()
    messages: dict[str, str] = {}
    for play in report.get("plays", []):
        for task in play.get("tasks", []):
            for host, result in task.get("hosts", {}).items():
                if (result.get("unreachable") or result.get("failed")) and host not in messages:
                    messages[host] = str(result.get("msg", "failed")).strip().splitlines()[0][:300]
    unreachable = {h for h, s in report.get("stats", {}).items() if s.get("unreachable")}
    return messages, unreachable


def read_fleet(
    command: list[str], env: dict[str, str], hosts: list[str], *, timeout: float = 600.0
) -> dict[str, HostFacts]:
    """Run the refresh playbook (``command`` is ansible-playbook with inventories, the playbook and
    the mesh file) in check mode and read every host in ``hosts``. Never raises for a host that
    cannot be read: that host's facts say why."""
    with tempfile.TemporaryDirectory(prefix="vpncloud-refresh-") as tmp:
        argv = [*command, "--check", "-e", f"vpncloud_facts_dir={tmp}"]
        run_env = dict(env, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
        try:
            proc = subprocess.run(
                argv, env=run_env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except OSError as exc:
            raise FleetReadError(f"ansible-playbook: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise FleetReadError(f"ansible-playbook refresh.yml: no answer within {timeout:.0f} s") from None
        # 0 all read, 2 a host failed, 4 a host unreachable: facts; anything else is a broken run.
        if proc.returncode not in (0, 2, 4):
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
            raise FleetReadError(f"ansible-playbook refresh.yml: exit status {proc.returncode}\n{tail}")
        messages, unreachable = _failures(proc.stdout)
        facts: dict[str, HostFacts] = {}
        for host in hosts:
            path = Path(tmp) / f"{host}.json"
            if path.is_file():
                facts[host] = parse_facts(host, json.loads(path.read_text(encoding="utf-8")))
                continue
            reason = messages.get(host) or "no facts (is the host in the vpncloud_nodes group?)"
            if host in unreachable:
                reason = f"unreachable: {reason}"
            facts[host] = HostFacts(host=host, reachable=False, error=reason)
        return facts
