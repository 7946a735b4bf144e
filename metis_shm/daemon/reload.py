"""metisd's ``SIGHUP``: read the configuration again, apply what can change live.

``reload()`` loads the file (and environment, and the command line's
arguments) as at start. An invalid configuration is refused and the running
one kept. Of a valid one, the ``LIVE_FIELDS`` that changed apply at once
(``apply_live``); the other changes are logged as needing a restart. The
reload, and the settings it changed, go to the audit log.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

from metis_shm.contrib.opentelemetry import daemon_span
from metis_shm.daemon import audit
from metis_shm.daemon.config import DaemonConfig, diff_config, load_config
from metis_shm.daemon.logs import set_log_level
from metis_shm.daemon.state import DaemonState
from metis_shm.errors import InvalidConfig, MetisError

log = logging.getLogger("metis_shm.daemon")


class ConfigReload(DaemonState):
    """The ``SIGHUP`` reload of ``Daemon``."""

    def reload(self) -> bool:
        """SIGHUP: read the configuration again; apply what can change live.
        Recorded in the audit log (``reload``, and ``config_change`` for the
        settings it changed)."""
        with daemon_span("reload") as span:
            ok = self._reload_config()
            span.set("ok", ok)
            return ok

    def _reload_config(self) -> bool:
        where = self.config_path or "the environment"
        log.info("SIGHUP received: reloading the configuration from %s", where)
        self.notifier.reloading()
        self.reloads["last_at"] = time.time()
        try:
            loaded = load_config(self.config_path, overrides=self.overrides)
        except (InvalidConfig, OSError) as exc:
            self.reloads["failed"] += 1
            self.reloads["last_error"] = str(exc)
            audit.record(
                "reload", None, outcome="refused", details={"config": where, "error": str(exc)}
            )
            log.error(
                "reload refused, the running configuration stays: %s",
                exc if isinstance(exc, MetisError) else f"{type(exc).__name__}: {exc}",
            )
            self.notifier.ready("ready: reload refused (see the log)")
            return False
        live, restart = diff_config(self.config, loaded.config)
        audit.record(
            "reload",
            None,
            outcome="ok",
            details={"config": where, "live": sorted(live), "need_restart": restart},
        )
        if live:
            audit.record(
                "config_change",
                None,
                details={k: {"old": old, "new": new} for k, (old, new) in live.items()},
            )
        self.config = apply_live(self.config, loaded.config, live)
        if "log_level" in live:
            set_log_level(self.config.log_level)
        self.reloads["ok"] += 1
        self.reloads["last_error"] = None
        if live:
            log.info(
                "reloaded: %s",
                ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in live.items()),
            )
        else:
            log.info("reloaded: no live setting changed")
        if restart:
            log.warning(
                "changed in the configuration but only applied by a restart of metisd "
                "(the running values stay): %s",
                ", ".join(restart),
            )
        self.notifier.ready(f"ready: {self._summary()}")
        return True


def apply_live(
    old: DaemonConfig, new: DaemonConfig, live: dict[str, tuple[Any, Any]]
) -> DaemonConfig:
    """``old`` with the ``live`` fields (from ``diff_config``) taken from ``new``."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for dotted in live:
        section, dot, key = dotted.partition(".")
        if dot:
            sections.setdefault(section, {})[key] = getattr(getattr(new, section), key)
        else:
            top[section] = getattr(new, section)
    for section, changes in sections.items():
        top[section] = msgspec.structs.replace(getattr(old, section), **changes)
    return msgspec.structs.replace(old, **top) if top else old


__all__ = ["ConfigReload", "apply_live"]
