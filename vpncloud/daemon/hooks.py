"""Hook scripts and other external commands (spec 19).

Hooks run as ``sh -c SCRIPT`` in a detached thread with the event's variables and ``EVENT``;
``ifup``/``ifdown`` run synchronously with ``IFNAME``. A non-zero exit is logged as an error.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Mapping

from .logs import get_logger

log = get_logger()


class Hooks:
    """Selects and runs the hook for an event (``hooks[event]`` wins over the global ``hook``)."""

    def __init__(self, hook: str | None, hooks: Mapping[str, str]) -> None:
        self.hook = hook
        self.hooks = dict(hooks)
        self._threads: list[threading.Thread] = []

    def script_for(self, event: str) -> str | None:
        """The command for ``event``, or None."""
        return self.hooks.get(event, self.hook)

    def fire(self, event: str, env: Mapping[str, str]) -> threading.Thread | None:
        """Run the hook for ``event`` asynchronously; returns the thread (tests may join it)."""
        script = self.script_for(event)
        if script is None:
            return None
        full_env = {**os.environ, **env, "EVENT": event}
        thread = threading.Thread(
            target=_run_logged, args=(script, full_env, f"Hook {event}"), daemon=True, name=f"hook-{event}"
        )
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        return thread

    def join(self, timeout: float = 5.0) -> None:
        """Wait for running hooks (at shutdown, so their output is not cut off)."""
        for thread in self._threads:
            thread.join(timeout)


def _run_logged(script: str, env: Mapping[str, str], what: str) -> None:
    try:
        result = subprocess.run(["sh", "-c", script], env=dict(env), stdin=subprocess.DEVNULL, check=False)
    except OSError as exc:
        log.error("%s failed to start: %s", what, exc)
        return
    if result.returncode != 0:
        log.error("%s failed with exit code %d", what, result.returncode)


def run_sync(script: str, env: Mapping[str, str], what: str) -> int:
    """``ifup``/``ifdown``: run now and wait; the exit status is logged when non-zero."""
    try:
        result = subprocess.run(
            ["sh", "-c", script], env={**os.environ, **env}, stdin=subprocess.DEVNULL, check=False
        )
    except OSError as exc:
        log.error("%s failed to start: %s", what, exc)
        return -1
    if result.returncode != 0:
        log.error("%s failed with exit code %d", what, result.returncode)
    return result.returncode
