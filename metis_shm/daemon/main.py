"""The ``metisd`` command line (console script ``metisd``, or ``python -m metis_shm.daemon``).

    metisd --config /etc/metis/metisd.toml
    metisd --destroy NAME [--force]

``main`` loads the configuration (defaults < file < ``METIS_*`` environment
< arguments), sets up the log (logs.py), and runs a ``Daemon``
(lifecycle.py) until a stop signal. ``--destroy`` removes a cache's segment
instead, refusing while a live metisd supervises it (unless ``--force``).

Exit status: 0 stopped cleanly; 1 failure; 2 bad configuration or usage;
3 refused to start (an incompatible segment, or another metisd owns a cache).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from metis_shm import __version__, segment
from metis_shm.daemon import audit
from metis_shm.daemon.config import load_config
from metis_shm.daemon.lifecycle import INCOMPATIBLE, Daemon, owning_daemon
from metis_shm.daemon.logs import setup_logging
from metis_shm.daemon.state import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, StartupError
from metis_shm.errors import InvalidConfig, MetisError, SegmentNotFound

log = logging.getLogger("metis_shm.daemon")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="metisd",
        description="The Metis supervisor: owns the shared-memory segments of the configured "
        "caches, sweeps expired items, writes snapshots, serves /healthz, /stats and /metrics.",
        epilog="Signals: SIGTERM/SIGINT stop (snapshot first if snapshot.on_shutdown), SIGHUP "
        "reloads the configuration, SIGUSR1 writes a snapshot now. See docs/daemon.md.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file (default: $METIS_CONFIG)")
    p.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR, CRITICAL")
    p.add_argument("--health-address", metavar="HOST:PORT", help="where to serve the endpoints")
    p.add_argument(
        "--replace-incompatible",
        action="store_true",
        help="replace a segment metisd cannot read or whose settings differ (items are lost "
        "unless a snapshot carries them over)",
    )
    p.add_argument("--destroy", metavar="NAME", help="remove the segment of cache NAME and exit")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --destroy: even if a live metisd supervises the cache",
    )
    p.add_argument("--version", action="version", version=f"metisd {__version__}")
    return p


def destroy(name: str, *, force: bool = False) -> int:
    """``metisd --destroy NAME``."""
    try:
        segment.validate_name(name)
        try:
            # Only its daemon pid is read: whoever owns it, it may be removed.
            opened = segment.attach(name, segment.OwnerCheck(allow_any=True))
        except SegmentNotFound:
            print(f"metisd: no cache named {name!r} ({segment.shm_path(name)} does not exist)",
                  file=sys.stderr)  # fmt: skip
            return EXIT_FAILURE
        except INCOMPATIBLE:
            opened = None  # not readable: nobody supervises it
        if opened is not None:
            os.close(opened.fd)
            other = owning_daemon(opened.header or {})
            if other is not None and not force:
                print(
                    f"metisd: cache {name!r} is supervised by a running metisd (pid {other}); "
                    f"stop it first, or add --force",
                    file=sys.stderr,
                )
                audit.record(
                    "destroy",
                    name,
                    outcome="refused",
                    details={"via": "metisd --destroy", "daemon_pid": other},
                )
                return EXIT_FAILURE
        with audit.operation("destroy", name, via="metisd --destroy", force=force):
            segment.destroy(name)
    except MetisError as exc:
        print(f"metisd: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, InvalidConfig | ValueError) else EXIT_FAILURE
    print(f"destroyed cache {name!r} ({segment.shm_path(name)}); processes that have it open "
          f"keep their mapping until they close it; snapshots are not touched")  # fmt: skip
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """The ``metisd`` console script."""
    args = _parser().parse_args(argv)
    if args.destroy:
        return destroy(args.destroy, force=args.force)
    overrides: dict[str, Any] = {}
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.health_address:
        overrides["health.address"] = args.health_address
    if args.replace_incompatible:
        overrides["replace_incompatible"] = True
    try:
        loaded = load_config(args.config, overrides=overrides)
    except InvalidConfig as exc:
        print(f"metisd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"metisd: cannot read the configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    handler = setup_logging(loaded.config.log_level)
    log.info(
        "metisd %s starting (pid %d), configuration from %s",
        __version__,
        os.getpid(),
        loaded.path or "the environment and defaults",
    )
    daemon = Daemon(loaded, overrides=overrides)
    daemon.install_signals()
    try:
        return daemon.run()
    except StartupError as exc:
        log.error("%s", exc)
        daemon.notifier.status(f"failed: {exc}")
        return exc.exit_code
    except Exception:
        log.exception("metisd failed")
        return EXIT_FAILURE
    finally:
        daemon.restore_signals()
        daemon.notifier.close()
        logging.getLogger().removeHandler(handler)


__all__ = ["destroy", "main"]
