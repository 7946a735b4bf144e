"""systemd's notification protocol (``sd_notify``), with a plain socket.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``: a unix datagram
socket to which the service sends newline-separated ``KEY=VALUE`` lines:
``READY=1`` once it serves, ``STATUS=...`` for ``systemctl status``,
``WATCHDOG=1`` at least every ``WATCHDOG_USEC`` microseconds when
``WatchdogSec=`` is set, ``RELOADING=1`` and ``STOPPING=1``,
``EXTEND_TIMEOUT_USEC=...`` while a long start (warm-up) or stop (the last
snapshot) runs. A path starting with ``@`` is in the abstract namespace (its
first byte is NUL on the wire).

Without ``NOTIFY_SOCKET`` (not under systemd, or ``Type=simple``) every call
is a no-op that returns False, so the daemon never has to ask.
No dependency: the protocol is one ``sendto`` per message.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("metis_shm.daemon")


def _socket_address(value: str) -> str | None:
    """The address to send to, or None for what we cannot reach (vsock:...)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Talks to systemd through ``NOTIFY_SOCKET``, if there is one.

    ``watchdog_interval`` is half of ``WATCHDOG_USEC`` in seconds (None when
    the watchdog is off or meant for another process, per ``WATCHDOG_PID``):
    send ``watchdog()`` at least that often.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = _socket_address(raw) if raw else None
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket path; not notifying systemd", raw)
        self._sock: socket.socket | None = None
        self._failed = False
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "").strip()
        pid = env.get("WATCHDOG_PID", "").strip()
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6

    @property
    def enabled(self) -> bool:
        """Is there a socket to notify?"""
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram. True if it was sent."""
        if self.address is None or not fields:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:  # once, not at every watchdog ping
                log.warning("cannot notify systemd through %r: %s", self.address, exc)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and ``MAINPID``), with a status line."""
        fields = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            fields.append(f"STATUS={status}")
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        """``STATUS=text``: what ``systemctl status`` shows."""
        return self.notify(f"STATUS={text}")

    def reloading(self) -> bool:
        """``RELOADING=1`` with the monotonic time (``Type=notify-reload`` wants it);
        follow with ``ready()`` when done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutting down on purpose."""
        fields = ["STOPPING=1"]
        if status:
            fields.append(f"STATUS={status}")
        return self.notify(*fields)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: still alive."""
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: a start or stop step needs ``seconds`` more."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1e6))}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


__all__ = ["Notifier"]
