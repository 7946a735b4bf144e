"""Snapshots: a cache's items on disk, and metisd's use of them.

* ``format``: the snapshot file: ``write_snapshot`` (atomic, checksummed,
  retention), ``read_snapshot_info``, ``verify_snapshot``, ``list_snapshots``;
* ``restore``: loading one into a cache (``restore``, ``restore_latest``);
* ``crypto``: encrypted snapshots (AES-256-GCM records) and ``SnapshotKeys``;
* ``schedule``: when metisd takes and reads them (the warm-up at start,
  every ``snapshot.interval``, on ``SIGUSR1``, at shutdown).

``metis snapshot`` and ``metis restore`` (``metis_shm.cli.snapshot``) use
the first three without the daemon. See docs/persistence.md.
"""
