"""``metisd``: the supervisor daemon that owns the segments of Metis caches.

    metisd --config /etc/metis/metisd.toml      # or: python -m metis_shm.daemon

At start it loads the configuration (defaults < file < ``METIS_*``
environment < arguments), starts the health endpoints, and opens each cache:
it creates the segment, or re-attaches to a compatible one (a restart loses
nothing). A segment it cannot read (another layout version, corrupt, not a
Metis segment) stops the start unless ``replace_incompatible`` says to
replace it. A cache it created is warmed up from the newest valid snapshot.
Then it tells systemd ``READY=1`` and runs the maintenance loop in the main
thread:

* every ``sweep.interval``: a TTL sweep of ``sweep.budget`` items per cache,
  in slices of ``SWEEP_SLICE`` items (no shard lock is held for more than
  one slice), and an access-buffer drain;
* every ``heartbeat_interval``: the heartbeat in each segment's header (what
  ``Cache.daemon_alive`` reads) and a stats roll-up, which takes every
  shard's lock and so repairs a shard whose lock holder died;
* every ``snapshot.interval``: a snapshot of each cache, in a thread of its
  own so that sweeps and heartbeats go on meanwhile;
* ``WATCHDOG=1`` at half of systemd's ``WATCHDOG_USEC``.

Signals only wake the loop (``signal.set_wakeup_fd``); the loop does the
work: ``SIGTERM``/``SIGINT`` stop (a last snapshot if
``snapshot.on_shutdown``; segments are left for the workers), ``SIGHUP``
reloads the file (live settings apply, the rest are logged as needing a
restart, an invalid file is refused and the running configuration kept),
``SIGUSR1`` writes a snapshot now.

Admin operations (reload, the configuration changes it applies, a snapshot
on demand, a segment destroyed or replaced, the warm-up restore) go to the
audit log (``metis_shm.daemon.audit``; ``audit_file`` for a JSON-lines
file). Snapshots are encrypted when ``snapshot.key_file`` (or
``METIS_SNAPSHOT_KEY``) gives a key; the keys are read at start, and a key
that cannot be read stops the start (exit 2).

Exit status: 0 stopped cleanly; 1 failure; 2 bad configuration or usage;
3 refused to start (an incompatible segment, or another metisd owns a cache).

The modules, one concern each:

* ``main``: the command line (``metisd``, ``metisd --destroy NAME``);
* ``lifecycle``: ``Daemon``: start (create or attach each cache, refuse or
  replace an incompatible one), the loop and its signals, stop;
* ``state``: what the parts of ``Daemon`` share (``DaemonState``), the
  counters per cache, ``StartupError`` and the exit statuses;
* ``maintenance``: sweeps, drains, heartbeats, stats roll-ups, slot reclaim;
* ``snapshots``: the snapshot file format (``format``), restoring
  (``restore``), encryption (``crypto``) and when the daemon takes them
  (``schedule``: warm-up, interval, ``SIGUSR1``, shutdown);
* ``reload``: ``SIGHUP``;
* ``status``: what ``/healthz``, ``/stats`` and ``/metrics`` answer;
* ``health``: the HTTP server of those endpoints and the Prometheus text;
* ``config``: the typed configuration and its sources;
* ``systemd``: ``sd_notify``; ``logs``: the log, with journald priorities;
* ``audit``: the audit log of admin operations (``Cache.clear`` and
  ``Cache.destroy`` record through it too).

Nothing is imported here: ``import metis_shm.daemon.config`` (as ``metis
config`` does) does not load the daemon.
"""
