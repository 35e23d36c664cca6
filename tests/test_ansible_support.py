"""Support code (no tests) of the Ansible tests: run ansible-playbook against the collection in ``ansible/``.

The collection is made resolvable as ``vpncloud.mesh`` through a temporary collections path holding
``ansible_collections/vpncloud/mesh`` -> ``ansible/`` (nothing is installed, Galaxy is never asked).
Runs use the JSON callback so tests read per-task results instead of parsing colourful text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COLLECTION = REPO / "ansible"
PLAYBOOKS = COLLECTION / "playbooks"
BIN = Path(sys.executable).parent


def ansible_missing() -> str | None:
    """Why the Ansible tests cannot run here (None when they can)."""
    for tool in ("ansible-playbook", "ansible-lint"):
        if not (BIN / tool).exists() and shutil.which(tool) is None:
            return f"{tool} is not installed (pip install ansible ansible-lint)"
    return None


def tool(name: str) -> str:
    """Path of an Ansible command next to this Python (the project's virtualenv)."""
    candidate = BIN / name
    return str(candidate) if candidate.exists() else name


def collections_path(tmp: Path) -> Path:
    """A collections path where ``vpncloud.mesh`` is this repository's ``ansible/``."""
    root = tmp / "collections"
    link = root / "ansible_collections" / "vpncloud" / "mesh"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(COLLECTION, target_is_directory=True)
    return root


def ansible_env(tmp: Path, *, json_output: bool = True) -> dict[str, str]:
    """Environment for ansible-playbook: our collection, no retry files, no cowsay, local temp."""
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_COLLECTIONS_PATH": str(collections_path(tmp)),
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_NOCOWS": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local"),
            "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-remote"),
            "ANSIBLE_HOST_KEY_CHECKING": "false",
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    if json_output:
        env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    return env


def _short(task_name: str) -> str:
    """A task's own name, without the ``role : `` prefix the callback adds."""
    return task_name.split(" : ", 1)[-1]


@dataclass
class Run:
    """One ansible-playbook run."""

    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def result(self) -> dict[str, Any]:
        """The JSON callback's document."""
        start = self.stdout.find("{")
        return dict(json.loads(self.stdout[start:]))

    def stats(self) -> dict[str, dict[str, int]]:
        """host -> {ok, changed, failures, unreachable, skipped, ...}."""
        return dict(self.result()["stats"])

    def changed_tasks(self, host: str) -> list[str]:
        """Names of the tasks that reported a change on ``host``."""
        names = []
        for play in self.result()["plays"]:
            for task in play["tasks"]:
                res = task["hosts"].get(host)
                if res and res.get("changed"):
                    names.append(_short(task["task"]["name"]))
        return names

    def task_result(self, host: str, name: str) -> dict[str, Any] | None:
        """The last result of the task called ``name`` on ``host``."""
        found = None
        for play in self.result()["plays"]:
            for task in play["tasks"]:
                if _short(task["task"]["name"]) == name and host in task["hosts"]:
                    found = task["hosts"][host]
        return found


def playbook(
    tmp: Path,
    book: str | Path,
    *args: str,
    inventory: Path | None = None,
    json_output: bool = True,
    timeout: float = 600,
) -> Run:
    """Run ``ansible-playbook`` for real and return its outcome."""
    path = book if isinstance(book, Path) else PLAYBOOKS / book
    cmd = [tool("ansible-playbook")]
    if inventory is not None:
        cmd += ["-i", str(inventory)]
    cmd += [str(path), *args]
    proc = subprocess.run(
        cmd,
        cwd=tmp,
        env=ansible_env(tmp, json_output=json_output),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)
