"""The far tier's tracker (metis_shm/far/tracker.py); its RESP connection's
parser is tests/far/test_resp.py's.

The tests (``integration``) run a real
redis-server (tests/far/conftest.py) and a ``Recorder`` in place of the near
tier, and check what the tracker calls and in which order: invalidations with
the prefix stripped, the generation bump after each subscription and flush,
vouches a staleness bound ahead, and unvouching at once when Redis dies,
stops answering or the subscription is lost otherwise. Every wait is a poll
with a deadline.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis_servers import RedisCluster, RedisServer

from metis_shm.far.resp import (
    Push,
    RespConnection,
    RespProtocolError,
)
from metis_shm.far.tracker import Tracker

WAIT_S = 5.0  # how long any expected call may take to show up


class Recorder:
    """A NearTarget that records every call, with the monotonic time it came."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, int]] = []
        self._cond = threading.Condition()
        self.registry: set[int] = set()  # default mode: the registered connection ids
        self.polls = 0

    def _add(self, what: str, arg: Any = None) -> None:
        with self._cond:
            self.calls.append((what, arg, time.monotonic_ns()))
            self._cond.notify_all()

    def invalidate(self, key: bytes) -> None:
        self._add("invalidate", key)

    def invalidate_all(self) -> None:
        self._add("invalidate_all")

    def vouch(self, until_monotonic_ns: int) -> None:
        self._add("vouch", until_monotonic_ns)

    def unvouch(self) -> None:
        self._add("unvouch")

    def publish_tracker(self, client_id: int) -> None:
        self._add("publish_tracker", client_id)

    def flushed(self) -> None:
        self._add("flushed")

    def reconnected(self) -> None:
        self._add("reconnected")

    def registered_connections(self) -> list[int]:
        # Not a call in the list: it comes with every poll.
        with self._cond:
            self.polls += 1
            self._cond.notify_all()
            return sorted(self.registry)

    def forget_connections(self, ids: list[int], *, lost: bool = True) -> None:
        with self._cond:
            self.registry -= set(ids)
        if lost:  # the void at each subscription is not listed either
            self._add("forget_connections", sorted(ids))

    def snapshot(self) -> list[tuple[str, Any, int]]:
        with self._cond:
            return list(self.calls)

    def mark(self) -> int:
        """An index: ``since(mark)`` is what came after."""
        with self._cond:
            return len(self.calls)

    def since(self, start: int, what: str | None = None) -> list[tuple[str, Any, int]]:
        return [c for c in self.snapshot()[start:] if what is None or c[0] == what]

    def keys(self, start: int = 0) -> list[bytes]:
        return [c[1] for c in self.since(start, "invalidate")]

    def wait(self, ok: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ok():
                left = deadline - time.monotonic()
                if left <= 0:
                    calls = [(c[0], c[1]) for c in self.calls[-30:]]
                    raise AssertionError(f"timed out waiting for {what}; last calls: {calls}")
                self._cond.wait(min(left, 0.05))  # also re-checks state that is not a call

    def wait_call(self, start: int, what: str, arg: Any = ..., timeout: float = WAIT_S) -> None:
        self.wait(
            lambda: any(c[0] == what and arg in (..., c[1]) for c in self.calls[start:]),
            f"{what}({'' if arg is ... else arg!r}) after call #{start}",
            timeout,
        )


@pytest.fixture
def trackers() -> Iterator[Callable[..., tuple[Tracker, Recorder]]]:
    """``trackers(url, **kwargs)`` starts a Tracker on a new Recorder; all stopped at teardown."""
    made: list[Tracker] = []

    def make(url: str, *, start: bool = True, **kwargs: Any) -> tuple[Tracker, Recorder]:
        rec = Recorder()
        kwargs.setdefault("name", "metis-test-tracker")
        tracker = Tracker(rec, url, **kwargs)
        made.append(tracker)
        if start:
            tracker.start()
        return tracker, rec

    yield make
    for tracker in made:
        tracker.stop()


def subscribed(tracker: Tracker, rec: Recorder, start: int = 0) -> None:
    """Wait until the tracker is subscribed and has vouched once (after call #start)."""
    rec.wait(lambda: tracker.state == "subscribed", "state subscribed")
    rec.wait_call(start, "vouch")


def settle(rec: Recorder, client: Any, key: str) -> None:
    """Write a marker key and wait for its invalidation: what was sent before is in."""
    mark = rec.mark()
    client.set(key, b"x")
    rec.wait_call(mark, "invalidate", key.split(":", 1)[1].encode())


def test_tracker_refuses_bad_settings() -> None:
    rec = Recorder()
    with pytest.raises(ValueError, match="client ids are per node"):
        Tracker(rec, "redis://127.0.0.1:1", mode="default", cluster=True)
    with pytest.raises(ValueError):
        Tracker(rec, "redis://127.0.0.1:1", ping_interval=1.0, staleness_bound=1.0)
    with pytest.raises(ValueError):
        Tracker(rec, "redis://127.0.0.1:1", protocol=4)
    with pytest.raises(ValueError):
        Tracker(rec, "redis://127.0.0.1:1/3", cluster=True)


def test_backoff_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        rec = Recorder()
        tracker = Tracker(rec, f"redis://127.0.0.1:{port}", connect_timeout=0.5)
        pauses = [tracker.run_once() for _ in range(6)]
        assert pauses == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
        stats = tracker.stats()
        assert tracker.state == "down" and stats["connect_failures"] == 6
        assert stats["reconnects"] == 0 and "Connection" in stats["last_error"]
        assert not rec.since(0, "vouch") and not rec.since(0, "invalidate_all")
        tracker.stop()
        assert tracker.state == "stopped" and rec.snapshot()[-2][0] == "unvouch"


# -- against a real server -------------------------------------------------------

Make = Callable[..., tuple[Tracker, Recorder]]


@pytest.mark.integration
@pytest.mark.parametrize("protocol", [3, 2])
def test_broadcast_delivers_prefixed_keys(
    redis_server: RedisServer, trackers: Make, protocol: int
) -> None:
    tracker, rec = trackers(redis_server.url, prefix="app:", protocol=protocol)
    subscribed(tracker, rec)
    first = rec.snapshot()
    # Nothing filled before the subscription can be trusted: a bump before any vouch.
    assert [c[0] for c in first].index("invalidate_all") < [c[0] for c in first].index("vouch")
    r = redis_server.client()
    mark = rec.mark()
    r.set("app:k1", b"v")
    r.set("other:k2", b"v")
    r.mset({"app:k3": b"v", "app:k4": b"v"})
    r.delete("app:k1")
    settle(rec, r, "app:zz")
    # In order: Redis queues a write's invalidation before it replies to the writer.
    assert rec.keys(mark) == [b"k1", b"k3", b"k4", b"k1", b"zz"]
    stats = tracker.stats()
    assert stats["invalidations"] == 5 and stats["state"] == "subscribed"
    assert len(stats["tracker_ids"]) == 1 and stats["connected_since"] is not None
    assert rec.since(0, "publish_tracker") == []  # broadcast mode publishes no id


@pytest.mark.integration
@pytest.mark.parametrize(("protocol", "worker_protocol"), [(3, 2), (3, 3), (2, 2), (2, 3)])
def test_default_mode_redirected(
    redis_server: RedisServer, trackers: Make, protocol: int, worker_protocol: int
) -> None:
    tracker, rec = trackers(redis_server.url, prefix="app:", mode="default", protocol=protocol)
    subscribed(tracker, rec)
    calls = [c[0] for c in rec.snapshot()]
    # Published before the bump: a fill from before workers could redirect is refused.
    assert calls.index("publish_tracker") < calls.index("invalidate_all") < calls.index("vouch")
    (tid,) = [c[1] for c in rec.since(0, "publish_tracker")]
    assert tid == tracker.stats()["tracker_ids"][0] and tid > 0
    worker = redis_server.client(single_connection_client=True, protocol=worker_protocol)
    assert worker.execute_command("CLIENT", "TRACKING", "ON", "REDIRECT", tid) in (
        b"OK",
        "OK",
        True,
    )
    writer = redis_server.client()
    writer.mset({"app:read": b"1", "app:unread": b"1", "zzz:read": b"1"})
    worker.get("app:read")
    worker.get("zzz:read")
    mark = rec.mark()
    writer.set("app:unread", b"2")  # nobody read it since: Redis sends nothing
    writer.set("zzz:read", b"2")  # read, but outside the prefix: ignored
    writer.set("app:read", b"2")
    rec.wait_call(mark, "invalidate", b"read")
    worker.get("app:read")
    mark = rec.mark()
    writer.flushall()
    rec.wait_call(mark, "flushed")
    stats = tracker.stats()
    assert rec.keys() == [b"read"] and stats["ignored"] == 1 and stats["flushes"] == 1
    worker.close()


@pytest.mark.integration
@pytest.mark.parametrize("protocol", [3, 2])
def test_flushall_bumps_the_generation(
    redis_server: RedisServer, trackers: Make, protocol: int
) -> None:
    tracker, rec = trackers(redis_server.url, protocol=protocol)
    subscribed(tracker, rec)
    mark = rec.mark()
    r = redis_server.client()
    r.flushall()
    rec.wait_call(mark, "flushed")
    r.set("k", b"v")
    r.flushdb()
    rec.wait(lambda: len(rec.since(mark, "flushed")) == 2, "a second bump")
    assert rec.since(mark, "invalidate_all") == []  # flushed() is the bump
    assert tracker.stats()["flushes"] == 2 and rec.keys(mark) == [b"k"]


@pytest.mark.integration
def test_vouches_grow_a_staleness_bound_ahead(redis_server: RedisServer, trackers: Make) -> None:
    bound = 0.5
    tracker, rec = trackers(redis_server.url, ping_interval=0.05, staleness_bound=bound)
    subscribed(tracker, rec)
    mark = rec.mark()
    rec.wait(lambda: len(rec.since(mark, "vouch")) >= 8, "8 vouches")
    vouches = rec.since(mark, "vouch")
    deadlines = [c[1] for c in vouches]
    assert deadlines == sorted(deadlines) and len(set(deadlines)) == len(deadlines)
    for _, until, called in vouches:
        ahead = (until - called) / 1e9
        assert bound - 0.2 < ahead <= bound - 0.01, ahead
    assert tracker.stats()["vouches"] >= 8


@pytest.mark.integration
@pytest.mark.parametrize("protocol", [3, 2])
def test_kill_unvouches_and_restart_resubscribes(
    redis_server: RedisServer, trackers: Make, protocol: int
) -> None:
    tracker, rec = trackers(
        redis_server.url, protocol=protocol, mode="default", ping_interval=0.05, staleness_bound=0.5
    )
    subscribed(tracker, rec)
    old_id = tracker.stats()["tracker_ids"][0]
    mark = rec.mark()
    redis_server.kill()
    rec.wait_call(mark, "unvouch", timeout=1.0)
    calls = rec.since(mark)
    names = [c[0] for c in calls]
    assert names[:4] == ["unvouch", "invalidate_all", "publish_tracker", "reconnected"]
    assert calls[2][1] == 0
    rec.wait(lambda: tracker.state == "down", "state down")
    assert tracker.stats()["reconnects"] == 1 and tracker.stats()["tracker_ids"] == []
    mark = rec.mark()
    redis_server.restart()
    subscribed(tracker, rec, mark)
    names = [c[0] for c in rec.since(mark)]
    assert names.index("publish_tracker") < names.index("invalidate_all") < names.index("vouch")
    new = tracker.stats()
    assert new["reconnects"] == 1 and new["tracker_ids"] != [] and new["state"] == "subscribed"
    assert rec.since(mark, "publish_tracker")[-1][1] == new["tracker_ids"][0] != 0
    assert old_id > 0


@pytest.mark.integration
def test_sigstop_unvouches_within_the_bound(redis_server: RedisServer, trackers: Make) -> None:
    bound = 0.5
    tracker, rec = trackers(redis_server.url, ping_interval=0.05, staleness_bound=bound)
    subscribed(tracker, rec)
    mark = rec.mark()
    stopped = time.monotonic_ns()
    redis_server.stop()
    try:
        rec.wait_call(mark, "unvouch", timeout=bound + 1.0)
        (unvouched,) = [c[2] for c in rec.since(mark, "unvouch")]
        last_vouch = max([c[1] for c in rec.since(0, "vouch")])
        # Lost within a ping interval (the last PING sent) plus the bound, and no
        # vouch ever reached beyond the bound after the server stopped.
        assert (unvouched - stopped) / 1e9 < bound + 0.05 + 0.2
        assert (last_vouch - stopped) / 1e9 <= bound
        assert "no PONG" in (tracker.stats()["last_error"] or "")
    finally:
        redis_server.cont()
    mark = rec.mark()
    subscribed(tracker, rec, mark)
    assert tracker.stats()["reconnects"] == 1


@pytest.mark.integration
def test_loss_without_the_bump(redis_server: RedisServer, trackers: Make) -> None:
    tracker, rec = trackers(redis_server.url, bump_on_loss=False)
    subscribed(tracker, rec)
    mark = rec.mark()
    redis_server.kill()
    rec.wait(lambda: tracker.state == "down", "state down")
    assert [c[0] for c in rec.since(mark)] == ["unvouch", "publish_tracker", "reconnected"]
    redis_server.restart()
    subscribed(tracker, rec, mark)
    names = [c[0] for c in rec.since(mark)]
    assert names.index("invalidate_all") < names.index("vouch")  # the resubscription's bump


@pytest.mark.integration
def test_stop_unvouches(redis_server: RedisServer, trackers: Make) -> None:
    tracker, rec = trackers(redis_server.url)
    subscribed(tracker, rec)
    tracker.stop()
    assert [c[0] for c in rec.snapshot()[-2:]] == ["unvouch", "publish_tracker"]
    assert tracker.state == "stopped"
    r = redis_server.client()
    mark = rec.mark()
    r.set("k", b"v")
    time.sleep(0.1)  # a bounded wait for nothing to happen
    assert rec.since(mark) == []
    tracker.stop()  # idempotent


@pytest.mark.integration
def test_run_once_without_a_thread(redis_server: RedisServer, trackers: Make) -> None:
    tracker, rec = trackers(redis_server.url, prefix="p:", start=False)
    deadline = time.monotonic() + WAIT_S
    while not rec.since(0, "vouch"):
        assert time.monotonic() < deadline, rec.snapshot()
        assert tracker.run_once(max_wait=0.05) == 0.0
    redis_server.client().set("p:x", b"1")
    while not rec.keys():
        assert time.monotonic() < deadline, rec.snapshot()
        tracker.run_once(max_wait=0.05)
    assert rec.keys() == [b"x"]


@pytest.mark.integration
@pytest.mark.parametrize("protocol", [3, 2])
def test_user_password_and_db(redis_server: RedisServer, trackers: Make, protocol: int) -> None:
    admin = redis_server.client()
    admin.acl_setuser("metis", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                      commands=["+@all"])  # fmt: skip
    admin.config_set("requirepass", "rootpw")
    admin.close()
    url = f"redis://metis:pw@127.0.0.1:{redis_server.port}/2"
    tracker, rec = trackers(url, prefix="a:", protocol=protocol)
    subscribed(tracker, rec)
    writer = redis_server.client(password="rootpw", db=2)
    settle(rec, writer, "a:k")
    writer.close()
    bad, bad_rec = trackers(url.replace(":pw@", ":wrong@"), protocol=protocol)
    bad_rec.wait(lambda: bad.stats()["connect_failures"] >= 1, "a refused login")
    assert "WRONGPASS" in bad.stats()["last_error"] and bad.state in ("down", "connecting")
    assert not bad_rec.since(0, "vouch")


def register(rec: Recorder, *ids: int) -> int:
    """Put ids in the recorder's registry, as workers do; the poll count then."""
    with rec._cond:
        rec.registry.update(ids)
        return rec.polls


def polled(rec: Recorder, since: int, n: int = 2) -> None:
    """Wait for n more registry polls (after the count ``since``)."""
    rec.wait(lambda: rec.polls >= since + n, f"{n} registry polls")


@pytest.mark.integration
@pytest.mark.parametrize("protocol", [3, 2])
def test_default_mode_a_registered_connection_that_closes_bumps(
    redis_server: RedisServer, trackers: Make, protocol: int
) -> None:
    tracker, rec = trackers(redis_server.url, mode="default", protocol=protocol,
                            ping_interval=0.05, staleness_bound=0.5)  # fmt: skip
    subscribed(tracker, rec)
    live = redis_server.client(single_connection_client=True)
    doomed = redis_server.client(single_connection_client=True)
    live_id, doomed_id = live.client_id(), doomed.client_id()
    mark = rec.mark()
    polls = register(rec, live_id, doomed_id)
    polled(rec, polls, 3)
    # Polled on the second connection (a subscribed RESP2 one could not): both there.
    assert rec.since(mark, "invalidate_all") == [] and tracker.state == "subscribed"
    assert tracker.stats()["connection_polls"] >= 2
    mark = rec.mark()
    closed = time.monotonic_ns()
    doomed.close()
    rec.wait_call(mark, "forget_connections", [doomed_id], timeout=1.0)
    names = [c[0] for c in rec.since(mark) if c[0] != "vouch"]
    assert names == ["invalidate_all", "forget_connections"]  # the bump first
    bumped = rec.since(mark, "invalidate_all")[0][2]
    assert (bumped - closed) / 1e9 < 0.05 + 0.2  # within about a ping interval
    assert rec.registry == {live_id}
    stats = tracker.stats()
    assert stats["connections_lost"] == 1 and stats["state"] == "subscribed"
    mark = rec.mark()
    rec.wait(lambda: len(rec.since(mark, "vouch")) >= 2, "vouching goes on")
    assert rec.since(mark, "invalidate_all") == []
    live.close()


@pytest.mark.integration
def test_default_mode_a_subscription_voids_the_registry(
    redis_server: RedisServer, trackers: Make
) -> None:
    tracker, rec = trackers(redis_server.url, mode="default", start=False)
    stale = redis_server.client(single_connection_client=True)
    register(rec, 999_999, stale.client_id())  # an id Redis never gave, and a live one
    tracker.start()
    subscribed(tracker, rec)
    # Voided before the subscription's bump (what they vouched for dies in it),
    # not lost: no second bump.
    assert rec.registry == set() and rec.since(0, "forget_connections") == []
    assert [c[0] for c in rec.snapshot()].count("invalidate_all") == 1
    assert tracker.stats()["connections_lost"] == 0
    stale.close()


@pytest.mark.integration
def test_default_mode_the_vouch_outlives_no_poll(redis_server: RedisServer, trackers: Make) -> None:
    bound = 0.5
    tracker, rec = trackers(redis_server.url, mode="default", ping_interval=0.05,
                            staleness_bound=bound)  # fmt: skip
    subscribed(tracker, rec)
    conn = redis_server.client(single_connection_client=True)
    polled(rec, register(rec, conn.client_id()))

    def stalled(now: int) -> None:  # polls stop being answered; the PONGs do not
        tracker._next_poll = now + tracker._ping_ns

    stopped = time.monotonic_ns()
    tracker._send_poll = stalled  # type: ignore[method-assign]
    try:
        time.sleep(bound + 0.2)  # a bounded wait for vouches that must not come
        assert max(c[1] for c in rec.since(0, "vouch")) <= stopped + int(bound * 1e9)
        assert tracker.state == "subscribed"  # not a loss: the gate closes by itself
    finally:
        del tracker._send_poll
    mark = rec.mark()
    rec.wait_call(mark, "vouch")
    assert rec.since(mark, "vouch")[0][1] > time.monotonic_ns()
    conn.close()


@pytest.mark.integration
def test_default_mode_needs_client_list(redis_server: RedisServer, trackers: Make) -> None:
    admin = redis_server.client()
    admin.acl_setuser("nolist", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                      commands=["+@all", "-client|list"])  # fmt: skip
    admin.close()
    url = f"redis://nolist:pw@127.0.0.1:{redis_server.port}"
    tracker, rec = trackers(url, mode="default")
    rec.wait(lambda: tracker.stats()["connect_failures"] >= 2, "refused twice")
    assert "CLIENT LIST refused" in tracker.stats()["last_error"]
    assert not rec.since(0, "vouch") and tracker.state in ("down", "connecting")
    ok, ok_rec = trackers(url, mode="broadcast")  # broadcast mode does not poll
    subscribed(ok, ok_rec)


def test_client_list_ids() -> None:
    from metis_shm.far.tracker import _client_ids

    listing = b"id=3 addr=127.0.0.1:1 laddr=x fd=8 name=\nid=17 addr=127.0.0.1:2 fd=9\n"
    assert _client_ids(listing) == {3, 17} and _client_ids(b"") == set()
    with pytest.raises(RespProtocolError):
        _client_ids(b"addr=x id=3\n")


class Conns:
    """RESP connections to one server, all closed on exit."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened: list[RespConnection] = []

    def open(self, protocol: int) -> tuple[RespConnection, int]:
        conn = RespConnection.open("127.0.0.1", self.port, protocol=protocol)
        self.opened.append(conn)
        return conn, conn.call("CLIENT", "ID")

    def reader(self, redirect_to: int) -> RespConnection:
        """A RESP2 connection that tracks, redirecting to ``redirect_to``, and read "k"."""
        reader, _ = self.open(2)
        assert reader.call("CLIENT", "TRACKING", "ON", "REDIRECT", redirect_to) == "OK"
        reader.call("GET", "k")
        return reader

    def __enter__(self) -> Conns:
        return self

    def __exit__(self, *exc: object) -> None:
        for conn in self.opened:
            conn.close()


def silent(conn: RespConnection) -> bool:
    try:
        conn.read(0.2)
    except TimeoutError:
        return True
    return False


@pytest.mark.integration
def test_redis_delivery_as_found(redis_server: RedisServer) -> None:
    """What the tracker's design rests on (tracker.py's docstring), kept true."""
    writer = redis_server.client()
    with Conns(redis_server.port) as conns, writer:
        # An unsubscribed RESP2 target: the invalidation is dropped without a word.
        target2, id2 = conns.open(2)
        conns.reader(id2)
        writer.set("k", b"1")
        assert silent(target2)
        # An unsubscribed RESP3 target gets a push.
        target3, id3 = conns.open(3)
        reader = conns.reader(id3)
        writer.set("k", b"2")
        assert target3.read(1.0) == Push([b"invalidate", [b"k"]])
        # The reader's connection closes: what it read is tracked no more, so a
        # near entry filled through it must not outlive it (default mode).
        reader.call("GET", "k")
        reader.close()
        deadline = time.monotonic() + WAIT_S
        while int(writer.info("clients")["connected_clients"]) > 4:  # writer, targets, reader 1
            assert time.monotonic() < deadline, "the closed reader is still connected"
            time.sleep(0.01)
        writer.set("k", b"3")
        assert silent(target3)
        # A RESP2 connection may redirect to itself (test_broadcast_* shows it delivers).
        assert target2.call("CLIENT", "TRACKING", "ON", "REDIRECT", id2, "BCAST") == "OK"


# -- a cluster ---------------------------------------------------------------------


def keys_on_each_primary(cluster: redis.cluster.RedisCluster, prefix: str) -> dict[str, str]:
    """One key per primary (by the node the client would send it to): node name -> key."""
    found: dict[str, str] = {}
    primaries = {n.name for n in cluster.get_primaries()}
    i = 0
    while len(found) < len(primaries):
        key = f"{prefix}{i}"
        found.setdefault(cluster.get_node_from_key(key).name, key)
        i += 1
    return found


@pytest.mark.integration
@pytest.mark.parametrize("protocol", [3, 2])
def test_cluster_invalidations_from_every_primary(
    redis_cluster: RedisCluster, trackers: Make, protocol: int
) -> None:
    tracker, rec = trackers(redis_cluster.seed_url, prefix="c:", cluster=True, protocol=protocol)
    subscribed(tracker, rec)
    stats = tracker.stats()
    assert len(stats["tracker_ids"]) == 3
    assert sorted(stats["nodes"]) == sorted(u.removeprefix("redis://") for u in redis_cluster.urls)
    client = redis_cluster.client()
    try:
        keys = keys_on_each_primary(client, "c:")
        assert len(keys) == 3
        mark = rec.mark()
        for key in keys.values():
            client.set(key, b"v")
        want = sorted(k.removeprefix("c:").encode() for k in keys.values())
        rec.wait(lambda: sorted(rec.keys(mark)) == want, f"invalidations of {want}")
        # Vouching goes on: the minimum over the nodes still advances.
        mark = rec.mark()
        rec.wait(lambda: len(rec.since(mark, "vouch")) >= 2, "two more vouches")
    finally:
        client.close()


@pytest.mark.integration
def test_cluster_topology_change_is_a_loss(redis_cluster: RedisCluster, trackers: Make) -> None:
    tracker, rec = trackers(redis_cluster.seed_url, cluster=True, staleness_bound=0.5,
                            ping_interval=0.05)  # fmt: skip
    subscribed(tracker, rec)
    real = tracker._read_topology
    mark = rec.mark()
    tracker._read_topology = lambda: real()[:2]  # type: ignore[method-assign]
    try:
        rec.wait_call(mark, "unvouch")
        assert "primaries changed" in tracker.stats()["last_error"]
    finally:
        del tracker._read_topology
    # Resubscribed to two primaries (then a check finds three: one more loss) or to three.
    rec.wait(
        lambda: len(tracker.stats()["tracker_ids"]) == 3 and tracker.state == "subscribed",
        "resubscribed to all three primaries",
    )
    mark = rec.mark()
    subscribed(tracker, rec, mark)
