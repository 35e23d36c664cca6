"""Logging in the original's formats (spec 20.1).

stdout gets ``LEVEL - message``; ``--log-file`` additionally gets
``YYYY-MM-DD HH:MM:SS - LEVEL - message`` (local time). The original's level names are ERROR, WARN,
INFO, DEBUG, so Python's WARNING is renamed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

LOGGER_NAME = "vpncloud"

_LEVEL_NAMES = {
    logging.CRITICAL: "ERROR",
    logging.ERROR: "ERROR",
    logging.WARNING: "WARN",
    logging.INFO: "INFO",
    logging.DEBUG: "DEBUG",
}


class _Formatter(logging.Formatter):
    def __init__(self, with_time: bool) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        level = _LEVEL_NAMES.get(record.levelno, record.levelname)
        text = f"{level} - {record.getMessage()}"
        if self.with_time:
            text = f"{self.formatTime(record, self.datefmt)} - {text}"
        return text


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the *current* sys.stdout, so daemonizing (stdout -> /dev/null) and tests work."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def setup_logging(verbose: bool = False, quiet: bool = False, log_file: str | None = None) -> logging.Logger:
    """Configure the ``vpncloud`` logger: -v debug, -q error, default info."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    logger.setLevel(level)
    logger.propagate = False
    out = _StdoutHandler()
    out.setFormatter(_Formatter(with_time=False))
    logger.addHandler(out)
    if log_file:
        # the original deletes and re-creates the file
        with contextlib.suppress(FileNotFoundError):
            os.unlink(log_file)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(_Formatter(with_time=True))
        logger.addHandler(fh)
    return logger


def get_logger() -> logging.Logger:
    """The daemon's logger."""
    return logging.getLogger(LOGGER_NAME)
