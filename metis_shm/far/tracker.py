"""The tracking connection(s) of one near cache: Redis's invalidations, applied to the segment.

metisd runs one ``Tracker`` per near cache. It holds the connection(s) on
which Redis's server-assisted invalidation (``CLIENT TRACKING``) arrives,
turns each invalidation into a call on a ``NearTarget`` (the near tier in the
shared segment) and, ping after ping, *vouches* for how long the near tier
may be served. Workers never talk to the tracker: they read what it wrote
to the segment.

Modes. ``broadcast``: the tracker's own connection runs ``CLIENT TRACKING ON
BCAST [PREFIX p]`` and hears of every write under the prefix, whoever reads
what. ``default``: Redis remembers which keys each *worker's* connection read
and sends their invalidations to the connection those workers name in
``CLIENT TRACKING ON REDIRECT <id>``: the tracker's, whose id it publishes
(``publish_tracker``).

What Redis 7.0 does (found by experiment, tests/far/test_tracker.py keeps it
true): a RESP3 connection receives invalidations as ``>2 invalidate [keys]``
pushes, its own (BCAST) or redirected to it, subscribed to
``__redis__:invalidate`` or not (a subscription changes nothing). A RESP2
connection receives them only as messages of the Pub/Sub channel
``__redis__:invalidate``, so it must be subscribed; if not, Redis drops them
silently. A RESP2 connection may ``REDIRECT`` to itself, so one connection is
enough in both protocols. A FLUSHALL/FLUSHDB is an invalidation with a null
key list, written in the protocol of the client being tracked (``$-1`` or
``_``), not the receiver's. In default mode Redis files what a connection
read under that connection's id: once it closes, those keys' invalidations
are never sent, to anyone.

Why it is coherent, in the order each subscription runs:

1. Tracking is on (and, RESP2, subscribed) before anything else happens, so
   every write from now on reaches us.
2. ``publish_tracker(id)`` (default mode), then ``invalidate_all()``: an
   entry filled before step 1 may have missed its invalidation, and bumping
   the generation after publishing means a fill that read an older
   generation (before workers could redirect to us) is refused.
3. PING every ``ping_interval``. Redis queues a write's invalidation for us
   before it replies to the writer (default mode: inline while the command
   runs; BCAST: in ``beforeSleep``, before replies are flushed), and one
   connection delivers in order: once the reply to a PING sent at ``t``
   arrives, the invalidation of every write acknowledged before ``t`` has
   been applied. So the near tier may be served until ``t + staleness_bound``
   (less a margin): ``vouch``. Losing the connection, or a PONG that is late
   by ``staleness_bound``, is handled at once: ``unvouch``, ``invalidate_all``,
   unpublish, reconnect with backoff, and step 1 again.

Default mode's connection registry. Redis files the keys a worker's
connection read under that connection's client id, and sends their
invalidations to the connection it REDIRECTs to; once the worker's
connection closes (redis-py drops a pooled connection, a worker exits, a
gunicorn worker is recycled), Redis forgets what it read, so a later write
of those keys is invalidated to no one, and a near entry filled through it
would be served stale until its TTL. So a worker registers the id of the
connection a GET went through in the segment before it fills
(metis_shm/far/words.py CONN_SLOTS), and:

4. At each subscription (before its bump) every registration is voided:
   a fill after the bump registers again, so every registered id is of this
   Redis, where an id is never reused.
5. Every ``ping_interval``, a poll: note the time ``p``, read the registered
   ids (``registered_connections``, which counts the poll first), ask a
   separate plain connection (a subscribed RESP2 one cannot) ``CLIENT LIST
   ID <ids>``. An id it does not list is closed: bump the generation
   (whatever it filled dies), then ``forget_connections``.
6. The vouch is capped at ``p + staleness_bound`` (less the margin), ``p``
   the start of the last poll answered, as with the cluster topology check:
   a write acknowledged at ``w`` whose invalidation was lost because the
   connection that read it closed before ``w`` can be served stale only
   under a vouch from a poll started before ``w`` (one started after it
   lists Redis's clients after the close and bumps). So the proof of "no
   registered connection is gone" is never older than the bound. A worker's
   registration that a poll's read might have missed (it registers after
   its fetch, knowing only then the connection's id) vouches for nothing:
   the worker re-reads the poll count after registering and does not fill
   if a poll began since it took its fill token.
"""

from __future__ import annotations

import collections
import logging
import select
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, NoReturn, Protocol

from metis_shm.far.resp import Push, RespConnection, RespError, RespProtocolError, parse_url

log = logging.getLogger("metis_shm.far")

CHANNEL: Final = b"__redis__:invalidate"
# The vouch ends this much before the staleness bound: a worker checks the
# deadline, then returns the value, and that takes time too.
MARGIN_NS: Final = 10_000_000
BACKOFF_START: Final = 0.05
BACKOFF_CAP: Final = 1.0

Mode = Literal["broadcast", "default"]
State = Literal["connecting", "subscribed", "down", "stopped"]


class NearTarget(Protocol):
    """What the tracker changes: the near tier of one cache (the lead's side)."""

    def invalidate(self, key: bytes) -> None:
        """Drop one near key (the Redis key with the prefix stripped)."""

    def invalidate_all(self) -> None:
        """Bump the near tier's generation: every entry is invalid at once."""

    def vouch(self, until_monotonic_ns: int) -> None:
        """The near tier may be served until then (``time.monotonic_ns`` clock)."""

    def unvouch(self) -> None:
        """Stop serving the near tier now."""

    def publish_tracker(self, client_id: int) -> None:
        """The client id workers' connections REDIRECT to (default mode); 0: none."""

    def flushed(self) -> None:
        """Redis said FLUSHALL/FLUSHDB: a bump, counted as a flush (optional:
        the tracker calls ``invalidate_all`` on a target without it)."""

    def reconnected(self) -> None:
        """Count one lost subscription (optional)."""

    def registered_connections(self) -> list[int]:
        """Default mode: begin a poll (count it) and read the client ids
        workers' connections registered."""

    def forget_connections(self, ids: list[int], *, lost: bool = True) -> None:
        """Default mode: free the registrations of ``ids`` (``lost``: found
        gone from Redis; False: voided by a new subscription)."""


class TrackerLost(ConnectionError):
    """The tracking subscription cannot be trusted any more (late PONG, topology change)."""


@dataclass
class _Link:
    """One tracking connection (one per cluster primary)."""

    conn: RespConnection
    node: tuple[str, int]
    client_id: int
    pings: collections.deque[int] = field(default_factory=collections.deque)  # send times
    acked_ns: int | None = None  # send time of the latest PING answered


@dataclass
class _Counters:
    invalidations: int = 0  # keys applied
    ignored: int = 0  # keys outside the prefix
    flushes: int = 0
    generation_bumps: int = 0
    vouches: int = 0
    connection_polls: int = 0  # default mode: CLIENT LIST polls answered
    connections_lost: int = 0  # default mode: registered connections found gone
    reconnects: int = 0  # subscriptions lost
    connect_failures: int = 0  # attempts that did not get as far as subscribed
    last_error: str | None = None
    connected_since: float | None = None  # time.time() of the current subscription
    tracker_ids: list[int] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)


class Tracker:
    """The tracking connection(s) for one near cache, run by a daemon thread.

    ``start()`` runs ``run_once`` in a loop until ``stop()``; a test may call
    ``run_once`` itself instead. ``prefix`` is the Redis key prefix of the
    near keys; ``staleness_bound`` is how stale (in seconds) a near value may
    be served, and also how late a PONG may be before the subscription counts
    as lost. ``cluster=True`` tracks every primary of the cluster ``url``
    belongs to (broadcast mode only), re-reading the topology every
    ``topology_interval`` (default: half the staleness bound).
    ``bump_on_loss=False`` keeps the near entries when the subscription is
    lost (unvouched, not served; for a bounded serve-stale mode).
    """

    def __init__(
        self,
        target: NearTarget,
        url: str,
        *,
        prefix: str | bytes = "",
        mode: Mode = "broadcast",
        protocol: int = 3,
        ping_interval: float = 0.1,
        staleness_bound: float = 1.0,
        cluster: bool = False,
        connect_timeout: float = 1.0,
        topology_interval: float | None = None,
        name: str = "metis-tracker",
        bump_on_loss: bool = True,
    ) -> None:
        topology_interval = staleness_bound / 2 if topology_interval is None else topology_interval
        self.address = parse_url(url)
        for bad, why in (
            (mode not in ("broadcast", "default"), f"mode is broadcast or default, not {mode!r}"),
            (protocol not in (2, 3), f"protocol is 2 or 3, not {protocol!r}"),
            (cluster and mode == "default", "default mode cannot track a cluster: client ids are"
             " per node, so workers' connections cannot all redirect to one; use broadcast"),
            (staleness_bound <= MARGIN_NS / 1e9, f"staleness_bound must exceed {MARGIN_NS}ns"),
            (not 0 < ping_interval < staleness_bound, "ping_interval must be in (0, bound)"),
            (cluster and not 0 < topology_interval < staleness_bound,
             "topology_interval must be in (0, staleness_bound)"),
            (cluster and self.address.db != 0, "a Redis cluster has database 0 only"),
        ):  # fmt: skip
            if bad:
                raise ValueError(why)
        if mode == "default" and not all(
            callable(getattr(target, m, None))
            for m in ("registered_connections", "forget_connections")
        ):
            raise ValueError(
                "default mode needs a target with registered_connections and forget_connections"
            )
        self.prefix = prefix.encode() if isinstance(prefix, str) else bytes(prefix)
        self.mode: Mode = mode
        self.protocol = protocol
        self.cluster = cluster
        self.name = name
        self.bump_on_loss = bump_on_loss
        self._target = target
        self._ping_ns = int(ping_interval * 1e9)
        self._bound_ns = int(staleness_bound * 1e9)
        self._topology_ns = int(topology_interval * 1e9)
        self._connect_timeout = connect_timeout
        self._links: list[_Link] = []
        self._known: list[tuple[str, int]] = []  # the primaries, to find the cluster by
        self._live = False  # published and/or bumped: a loss must be handled in full
        self._state: State = "connecting"
        self._next_ping = 0
        self._next_topology = 0
        self._topology_ok_ns: int | None = None
        # Default mode's registry poll (module docstring, 4-6).
        self._poll: RespConnection | None = None
        self._poll_sent: tuple[int, list[int]] | None = None  # (start, ids) awaiting a reply
        self._next_poll = 0
        self._conns_ok_ns: int | None = None  # start of the last poll answered
        self._list_by_id = True  # CLIENT LIST ID (Redis 6.2+); else the whole list
        self._poll_refusal_logged = False
        self._vouched_until = 0
        self._backoff = BACKOFF_START
        self._counters = _Counters()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> State:
        """connecting, subscribed, down (waiting to reconnect) or stopped."""
        return self._state

    def stats(self) -> dict[str, Any]:
        """The counters, the state and the tracking client id(s), as plain values."""
        out = asdict(self._counters)
        out["state"] = self._state
        out["vouched_until_ns"] = self._vouched_until
        return out

    def start(self) -> None:
        """Run the tracker in a daemon thread named after the tracker."""
        if self._thread is not None:
            raise RuntimeError("a Tracker starts once")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it, close the connections and unvouch (idempotent)."""
        if self._state == "stopped":
            return
        self._stopping.set()
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join()
        # The thread is gone: nothing can vouch after this.
        self._target.unvouch()
        self._target.publish_tracker(0)
        self._live = False
        self._close_links()
        self._counters.connected_since = None
        self._counters.tracker_ids = []
        self._state = "stopped"
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            pause = self.run_once()
            if pause:
                self._stopping.wait(pause)

    def run_once(self, max_wait: float | None = None) -> float:
        """One step: subscribe if not subscribed, else ping when due, read what
        arrived (waiting at most ``max_wait`` seconds, None: until the next
        deadline) and check the deadlines. Returns how long to wait before the
        next step: the backoff after a failure, else 0."""
        if self._stopping.is_set():
            return 0.0
        try:
            if self._links:
                self._serve(max_wait)
            else:
                self._subscribe()
        except Exception as err:  # every failure leaves the near tier unvouched
            if not isinstance(err, OSError | RespError):
                log.exception("tracker %s: unexpected error", self.name)
            self._lose(err)
            pause = self._backoff
            self._backoff = min(2 * self._backoff, BACKOFF_CAP)
            return pause
        return 0.0

    def _subscribe(self) -> None:
        self._state = "connecting"
        self._topology_ok_ns = time.monotonic_ns()  # before the read: what it says holds from then
        nodes = self._read_topology() if self.cluster else [(self.address.host, self.address.port)]
        links: list[_Link] = []
        poll: RespConnection | None = None
        try:
            for node in nodes:
                links.append(self._open_link(node))
            if self.mode == "default":
                poll = self._connect(nodes[0], 2, self._connect_timeout)
                self._probe_client_list(poll, links[0].client_id)
        except BaseException:
            for link in links:
                link.conn.close()
            if poll is not None:
                poll.close()
            raise
        self._links = links
        self._poll = poll
        self._poll_sent = None
        self._known = list(nodes)
        self._live = True
        if self.mode == "default":
            self._target.publish_tracker(links[0].client_id)
            # Registrations made before this bump vouched for fills it kills;
            # voided first, so that a fill after the bump has registered after
            # it (every registered id is then of the Redis we track, 4.). The
            # bump is a poll that finds every connection gone, so the vouch
            # may reach the bound past this moment.
            self._conns_ok_ns = time.monotonic_ns()
            self._target.forget_connections(self._target.registered_connections(), lost=False)
        self._bump()
        now = time.monotonic_ns()
        self._next_ping = now
        self._next_poll = now
        self._next_topology = now + self._topology_ns
        self._vouched_until = 0
        c = self._counters
        c.connected_since = time.time()
        c.tracker_ids = [link.client_id for link in links]
        c.nodes = [f"{h}:{p}" for h, p in nodes]
        self._state = "subscribed"
        log.info("tracker %s: subscribed to %s, client ids %s", self.name, c.nodes, c.tracker_ids)

    def _connect(self, node: tuple[str, int], protocol: int, timeout: float) -> RespConnection:
        a = self.address
        return RespConnection.open(
            node[0], node[1], timeout=timeout, protocol=protocol,
            username=a.username, password=a.password, db=a.db, name=self.name,
        )  # fmt: skip

    def _open_link(self, node: tuple[str, int]) -> _Link:
        conn = self._connect(node, self.protocol, self._connect_timeout)
        try:
            client_id = conn.call("CLIENT", "ID")
            if not isinstance(client_id, int):
                raise RespProtocolError(f"CLIENT ID answered {client_id!r}")
            if self.mode == "broadcast":
                # RESP2 cannot carry a push on a command connection, so the
                # invalidations go to our own Pub/Sub subscription instead.
                track: list[str | bytes | int] = ["CLIENT", "TRACKING", "ON"]
                if self.protocol == 2:
                    track += ["REDIRECT", client_id]
                track.append("BCAST")
                if self.prefix:
                    track += ["PREFIX", self.prefix]
                if (reply := conn.call(*track)) != "OK":
                    raise RespProtocolError(f"CLIENT TRACKING answered {reply!r:.100}")
            # Last: a subscribed RESP2 connection accepts no other command.
            # Invalidations sent before this are dropped, which is why
            # _subscribe bumps the generation only after it.
            if self.protocol == 2 and (reply := conn.call("SUBSCRIBE", CHANNEL))[:1] != [
                b"subscribe"
            ]:
                raise RespProtocolError(f"SUBSCRIBE answered {reply!r:.100}")
        except BaseException:
            conn.close()
            raise
        return _Link(conn, node, client_id)

    def _read_topology(self) -> list[tuple[str, int]]:
        """The primaries, from ``CLUSTER SLOTS`` of the seed or a known primary.

        CLUSTER SLOTS (every version; the first node of each range is its
        primary) rather than CLUSTER SHARDS (7.0+). Only the set of primaries
        matters: BCAST on a primary covers every key it holds, so slots moving
        between the primaries we track lose nothing (the source's MIGRATE
        deletes the key, which invalidates it); a new primary, or a failover,
        changes the set.
        """
        seed = (self.address.host, self.address.port)
        error: Exception = ConnectionError("no node to ask")
        # Short: a stopped node must not hold up the pings of the others for long.
        timeout = min(self._connect_timeout, self._bound_ns / 4e9)
        for node in dict.fromkeys([seed, *self._known]):
            try:
                conn = self._connect(node, 2, timeout)
                try:
                    slots = conn.call("CLUSTER", "SLOTS")
                finally:
                    conn.close()
                return _primaries(slots, node[0])
            except (OSError, RespError) as err:
                error = err
        raise error

    def _serve(self, max_wait: float | None) -> None:
        now = time.monotonic_ns()
        if now >= self._next_ping:
            for link in self._links:
                link.conn.send("PING")
                link.pings.append(now)
            self._next_ping = now + self._ping_ns
        if self.cluster and now >= self._next_topology:
            self._check_topology(now)
        if self._poll is not None and self._poll_sent is None and now >= self._next_poll:
            self._send_poll(now)
        due = min(
            [self._next_ping, *(lk.pings[0] + self._bound_ns for lk in self._links if lk.pings)]
        )
        if self.cluster:
            due = min(due, self._next_topology)
        if self._poll is not None:
            due = min(due, self._next_poll if self._poll_sent is None
                      else self._poll_sent[0] + self._bound_ns)  # fmt: skip
        wait = max(0.0, (due - time.monotonic_ns()) / 1e9)
        by_fd = {lk.conn.fileno(): lk for lk in self._links}
        poll_fd = self._poll.fileno() if self._poll is not None else -1
        readable, _, _ = select.select(
            [*by_fd, self._wake_r.fileno(), *([poll_fd] if poll_fd >= 0 else [])],
            [],
            [],
            wait if max_wait is None else min(wait, max_wait),
        )
        for fd in readable:
            if fd == poll_fd:
                self._read_poll()
                continue
            ready = by_fd.get(fd)
            if ready is None:
                self._wake_r.recv(64)
                continue
            while True:
                try:
                    reply = ready.conn.read(0)
                except TimeoutError:
                    break
                self._handle(ready, reply)
        # Deadlines after reading: a PONG that came while this thread was not
        # scheduled is in the socket, and it counts.
        now = time.monotonic_ns()
        for link in self._links:
            if link.pings and now - link.pings[0] >= self._bound_ns:
                late = f"{link.node[0]}:{link.node[1]}"
                raise TrackerLost(f"no PONG from {late} within {self._bound_ns / 1e9:g} s")
        if self._poll_sent is not None and now - self._poll_sent[0] >= self._bound_ns:
            raise TrackerLost(f"no CLIENT LIST reply within {self._bound_ns / 1e9:g} s")

    def _check_topology(self, now: int) -> None:
        self._next_topology = now + self._topology_ns
        try:
            nodes = self._read_topology()
        except (OSError, RespError) as err:
            # Not a loss by itself (the pings say whether the primaries are
            # there), but the vouch stops growing until a check succeeds.
            log.warning("tracker %s: cannot read the cluster topology: %s", self.name, err)
            return
        if set(nodes) != set(self._known):
            raise TrackerLost(f"the cluster's primaries changed: {sorted(nodes)}")
        self._topology_ok_ns = now

    def _handle(self, link: _Link, reply: Any) -> None:
        kind = reply[0] if isinstance(reply, list) and reply else None
        if isinstance(reply, Push):  # RESP3
            if kind == b"invalidate" and len(reply) == 2:
                self._invalidate(reply[1])
            return  # the others (subscribe confirmations, other channels) are not ours
        if self.protocol == 2 and isinstance(reply, list):  # a subscribed RESP2 connection
            if kind == b"message" and len(reply) == 3:
                if reply[1] == CHANNEL:
                    self._invalidate(reply[2])
                return
            if kind == b"pong":  # what PING answers in a RESP2 subscription
                self._pong(link)
                return
        if reply == "PONG":
            self._pong(link)
            return
        raise RespProtocolError(f"unexpected reply from Redis: {reply!r:.100}")

    def _invalidate(self, keys: Any) -> None:
        if keys is None:  # FLUSHALL or FLUSHDB
            self._counters.flushes += 1
            flushed = getattr(self._target, "flushed", None)
            (flushed or self._target.invalidate_all)()  # flushed(): a bump, counted as a flush
            self._counters.generation_bumps += 1
            return
        if not isinstance(keys, list):
            raise RespProtocolError(f"an invalidation's keys are {type(keys).__name__}")
        prefix, n = self.prefix, len(self.prefix)
        for key in keys:
            if isinstance(key, bytes) and key.startswith(prefix):
                self._target.invalidate(key[n:])
                self._counters.invalidations += 1
            else:
                self._counters.ignored += 1

    def _pong(self, link: _Link) -> None:
        if not link.pings:
            raise RespProtocolError("a PONG without a PING")
        link.acked_ns = link.pings.popleft()
        self._revouch()

    def _revouch(self) -> None:
        """Vouch with the oldest of the proofs: each node's last PONG, the
        last topology check (cluster), the last registry poll (default)."""
        acked = [lk.acked_ns for lk in self._links]
        # Every node must have answered: a node not heard from yet vouches for nothing.
        if any(t is None for t in acked):
            return
        floor = min(t for t in acked if t is not None)
        if self.cluster and self._topology_ok_ns is not None:
            # A primary that appeared after the last good check is not tracked yet.
            floor = min(floor, self._topology_ok_ns)
        if self.mode == "default":
            # A worker's connection that closed after the last poll answered
            # may have taken invalidations with it (module docstring, 6.).
            if self._conns_ok_ns is None:
                return
            floor = min(floor, self._conns_ok_ns)
        until = floor + self._bound_ns - MARGIN_NS
        if until > self._vouched_until and until > time.monotonic_ns():
            self._target.vouch(until)
            self._vouched_until = until
            self._counters.vouches += 1
            self._backoff = BACKOFF_START  # the subscription works: a next loss retries fast

    def _send_poll(self, now: int) -> None:
        """Begin a registry poll: ``now`` is its start, taken before the
        registry is read (and the poll counted), so the vouch it earns can
        only be shorter than the truth."""
        assert self._poll is not None
        self._next_poll = now + self._ping_ns
        ids = self._target.registered_connections()
        if not ids:  # nothing filled through a connection that could be gone
            self._polled(now, ids, set())
            return
        self._poll.send(*self._client_list(ids))
        self._poll_sent = (now, ids)

    def _probe_client_list(self, poll: RespConnection, own_id: int) -> None:
        """Before anything is vouched for: may we poll, and how (CLIENT LIST ID is 6.2+)?"""
        try:
            reply = poll.call(*self._client_list([own_id]))
        except RespError as err:
            if not (self._list_by_id and "syntax" in str(err).lower()):
                self._poll_refused(err)
            self._list_by_id = False  # Redis before 6.2: the whole list
            reply = poll.call(*self._client_list([own_id]))
        if not isinstance(reply, bytes | str) or own_id not in _client_ids(reply):
            raise RespProtocolError(f"CLIENT LIST does not list us: {reply!r:.100}")

    def _poll_refused(self, err: RespError) -> NoReturn:
        if not self._poll_refusal_logged:
            self._poll_refusal_logged = True
            log.error(
                "tracker %s: Redis refused CLIENT LIST (%s): default tracking cannot tell"
                " when a worker's connection closes, so the near tier is not served;"
                " allow CLIENT LIST to metisd's Redis user, or use broadcast tracking",
                self.name,
                err,
            )
        raise TrackerLost(f"CLIENT LIST refused: {err}") from err

    def _client_list(self, ids: list[int]) -> list[str | int]:
        return ["CLIENT", "LIST", "ID", *ids] if self._list_by_id else ["CLIENT", "LIST"]

    def _read_poll(self) -> None:
        assert self._poll is not None
        while True:
            try:
                reply = self._poll.read(0)
            except TimeoutError:
                return
            except RespError as err:  # allowed at subscription (the probe): not now
                self._poll_refused(err)
            if self._poll_sent is None or not isinstance(reply, bytes | str):
                raise RespProtocolError(f"unexpected reply to CLIENT LIST: {reply!r:.100}")
            started, ids = self._poll_sent
            self._poll_sent = None
            self._polled(started, ids, _client_ids(reply))

    def _polled(self, started: int, ids: list[int], present: set[int]) -> None:
        """A poll begun at ``started`` found ``present`` of the registered ``ids``."""
        gone = [i for i in ids if i not in present]
        if gone:
            # What these connections read is filed under ids Redis has
            # forgotten: no write of those keys will be invalidated. Kill
            # every near entry (which ones came through them is not known),
            # then free their slots.
            self._bump()
            self._target.forget_connections(gone)
            self._counters.connections_lost += len(gone)
            log.info("tracker %s: worker connection(s) %s closed: generation bumped",
                     self.name, gone)  # fmt: skip
        self._counters.connection_polls += 1
        self._conns_ok_ns = started
        self._revouch()

    def _bump(self) -> None:
        self._target.invalidate_all()
        self._counters.generation_bumps += 1

    def _lose(self, err: Exception) -> None:
        c = self._counters
        c.last_error = f"{type(err).__name__}: {err}"
        if self._live:
            self._live = False
            # Stop serving first: each later step may fail, and whatever
            # fails, the near tier must not be served on a dead subscription.
            # The bump is belt and braces (a resubscription bumps before it
            # vouches again); without it, on_down="stale" can serve what it had.
            bump = self._bump if self.bump_on_loss else (lambda: None)
            reconnected = getattr(self._target, "reconnected", None) or (lambda: None)
            steps = (self._target.unvouch, bump, lambda: self._target.publish_tracker(0),
                     reconnected)  # fmt: skip
            for step in steps:
                try:
                    step()
                except Exception:
                    log.exception("tracker %s: the near tier refused a loss step", self.name)
            c.reconnects += 1
            log.warning("tracker %s: lost the subscription (%s); reconnecting", self.name, err)
        else:
            c.connect_failures += 1
            log.debug("tracker %s: cannot subscribe: %s", self.name, err)
        self._close_links()
        self._vouched_until = 0
        self._conns_ok_ns = None
        c.connected_since = None
        c.tracker_ids = []
        self._state = "down"

    def _close_links(self) -> None:
        links, self._links = self._links, []
        for link in links:
            link.conn.close()
        poll, self._poll, self._poll_sent = self._poll, None, None
        if poll is not None:
            poll.close()


def _client_ids(listing: bytes | str) -> set[int]:
    """The ids in a CLIENT LIST reply: one line per client, ``id=<n> addr=...``."""
    text = listing.encode() if isinstance(listing, str) else listing
    out = set()
    for line in text.splitlines():
        first = line.split(b" ", 1)[0]
        if not (first.startswith(b"id=") and first[3:].isdigit()):
            raise RespProtocolError(f"a CLIENT LIST line: {line!r:.100}")
        out.add(int(first[3:]))
    return out


def _primaries(slots: Any, asked: str) -> list[tuple[str, int]]:
    """(host, port) of each primary in a CLUSTER SLOTS reply; ``asked`` stands
    in for a node that does not know its own address ("" or "?")."""
    if not isinstance(slots, list):
        raise RespProtocolError(f"CLUSTER SLOTS answered {slots!r:.100}")
    found: dict[tuple[str, int], None] = {}
    for entry in slots:
        if not (isinstance(entry, list) and len(entry) >= 3 and isinstance(entry[2], list)
                and len(entry[2]) >= 2 and isinstance(entry[2][1], int)):  # fmt: skip
            raise RespProtocolError(f"a CLUSTER SLOTS entry: {entry!r:.100}")
        ip = entry[2][0]
        host = ip.decode() if isinstance(ip, bytes) and ip not in (b"", b"?") else asked
        found[(host, entry[2][1])] = None
    if not found:
        raise TrackerLost("the cluster has no slots assigned")
    return list(found)
