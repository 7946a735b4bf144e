"""The segment as the tracker's target: what an invalidation, a flush or a
vouch does to one near cache (the NearTarget the tracker drives)."""

from __future__ import annotations

from metis_shm import _engine
from metis_shm.errors import MetisError
from metis_shm.far import words

_STATE = {name: i for i, name in enumerate(words.TRACKER_STATES)}


class SegmentTarget:
    """Applies a tracker's findings to one near cache's segment."""

    def __init__(self, cache: _engine.Engine) -> None:
        self.cache = cache

    def invalidate(self, key: bytes) -> None:
        """Kill the near copies of one Redis key (prefix stripped). A near
        key may be str or bytes; Redis knows only bytes, so both die."""
        c = self.cache
        c._add_word(words.INVALIDATIONS)
        try:
            c.invalidate(key)
            c.invalidate(key.decode())
        except UnicodeDecodeError:
            pass  # no str key has these bytes
        except MetisError:
            pass  # longer than max_key_size: never stored near

    def invalidate_all(self) -> None:
        """One generation bump: every near entry dead at once."""
        self.cache.invalidate_all()
        self.cache._add_word(words.GENERATION_BUMPS)

    def flushed(self) -> None:
        """Redis said FLUSHALL/FLUSHDB."""
        self.cache._add_word(words.FLUSHES)
        self.invalidate_all()

    def vouch(self, until_monotonic_ns: int) -> None:
        """Serve the near tier until then."""
        self.cache._vouch(until_monotonic_ns)
        self.cache._set_word(words.LAST_VOUCH_NS, until_monotonic_ns)
        self.cache._set_word(words.TRACKER_STATE, _STATE["subscribed"])

    def unvouch(self) -> None:
        """Stop serving the near tier now."""
        self.cache._vouch(0)
        self.cache._set_word(words.TRACKER_STATE, _STATE["down"])

    def publish_tracker(self, client_id: int) -> None:
        """The client id workers redirect to (default tracking); 0: none."""
        self.cache._set_word(words.TRACKER_ID, client_id)

    def set_state(self, state: str, pid: int = 0) -> None:
        """The tracker's state as metis top and /metrics show it."""
        self.cache._set_word(words.TRACKER_STATE, _STATE[state])
        if pid:
            self.cache._set_word(words.TRACKER_PID, pid)

    def registered_connections(self) -> list[int]:
        """Begin a poll of the connection registry: count the poll, then read
        the ids. In that order: a worker that registers while this reads
        re-reads the count after registering, sees it moved, and does not
        fill (metis_shm/far/near.py), so a registration this read misses
        never vouches for a fill."""
        c = self.cache
        c._add_word(words.CONN_POLLS)
        return sorted({w for i in words.CONN_SLOTS if (w := c._word(i))})

    def forget_connections(self, ids: list[int], *, lost: bool = True) -> None:
        """Free the slots of ``ids`` (the tracker bumps the generation too,
        which kills what they vouched for; a worker whose id was freed
        registers it again before its next fill). ``lost``: they are gone
        from Redis (counted); False: a new subscription voids every
        registration made before it."""
        c = self.cache
        forgotten = set(ids)
        for i in words.CONN_SLOTS:
            w = c._word(i)
            if w in forgotten:
                c._cas_word(i, w, 0)
        if lost:
            c._add_word(words.CONNECTIONS_LOST, len(forgotten))

    def reconnected(self) -> None:
        """Count one lost and re-made tracking connection."""
        self.cache._add_word(words.RECONNECTS)
