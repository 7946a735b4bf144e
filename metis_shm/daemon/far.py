"""metisd's part in the far tier: one tracking connection per near cache
(metis_shm/far/tracker.py), started when the cache opens and stopped before
it closes. The tracker runs in its own thread, so a slow sweep or snapshot
never delays an invalidation; what it does to the segment is
metis_shm/far/target.py's.
"""

from __future__ import annotations

import logging
import os

from metis_shm.daemon.state import DaemonState, Managed
from metis_shm.far.settings import FarSettings
from metis_shm.far.target import SegmentTarget
from metis_shm.far.tracker import Tracker

log = logging.getLogger("metis_shm.daemon")


class FarTracking(DaemonState):
    """Starts and stops the trackers of the caches with a far table."""

    def start_tracker(self, managed: Managed) -> None:
        """Gate the segment and start its tracker (no-op without far)."""
        if managed.config.far is None:
            return
        far = FarSettings.build(managed.config.far)
        target = SegmentTarget(managed.cache)
        # Gate first: until the tracker has subscribed and vouched, the
        # segment serves nothing, whatever it held before this metisd.
        managed.cache._set_gated(True)
        managed.cache._vouch(0)
        target.set_state("connecting", pid=os.getpid())
        managed.tracker = Tracker(
            target,
            far.url,
            prefix=far.prefix,
            mode=far.tracking,  # type: ignore[arg-type]
            protocol=far.protocol,
            ping_interval=far.ping_interval,
            staleness_bound=far.staleness_bound,
            cluster=far.cluster,
            connect_timeout=far.timeout,
            # Serve-stale needs the entries a loss would kill; nothing is
            # served unvouched anyway, and a resubscription always bumps.
            bump_on_loss=far.on_down != "stale",
            name=f"metis-tracker-{managed.name}",
        )
        managed.tracker.start()
        log.info(
            "cache %r: near tier of %s (prefix %r, %s tracking, RESP%d, staleness bound %.3fs)",
            managed.name,
            far.public_url,
            far.prefix,
            far.tracking,
            far.protocol,
            far.staleness_bound,
        )

    def stop_tracker(self, managed: Managed) -> None:
        """Stop the tracker: the segment stops serving at once (unvouched)."""
        tracker = managed.tracker
        if tracker is None:
            return
        managed.tracker = None
        tracker.stop()
        SegmentTarget(managed.cache).set_state("stopped")
