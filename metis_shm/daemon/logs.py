"""metisd's log: one stderr handler; under systemd, lines journald files at their level.

journald sets ``JOURNAL_STREAM`` to the device and inode of the stream it
reads; when stderr is that stream, each line gets an ``<N>`` priority prefix
(sd-daemon(3)) and no time (journald adds its own). ``set_log_level``
changes the level of the ``metis_shm`` loggers (a ``SIGHUP`` may).
"""

from __future__ import annotations

import logging
import os
import sys

_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _JournalFormatter(logging.Formatter):
    """``<priority>`` prefixes (sd-daemon(3)): journald files each line at its
    level; it adds the time itself."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def _stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def setup_logging(level: str) -> logging.Handler:
    """One stderr handler on the root logger; the ``metis_shm`` loggers at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    set_log_level(level)
    return handler


def set_log_level(level: str) -> None:
    """The level of the ``metis_shm`` logger, and so of ``metis_shm.daemon``,
    ``metis_shm.config`` and ``metis_shm.audit``."""
    logging.getLogger("metis_shm").setLevel(level.upper())


__all__ = ["set_log_level", "setup_logging"]
