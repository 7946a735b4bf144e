"""The trace simulator: hit ratios of the engine's own policies on real traces.

* ``simulator``: ``simulate(trace, sizes, policies)`` replays a trace through
  a real ``Cache`` in shared memory per policy and size and counts hits
  (``SimulationResult``: a table, JSON);
* ``traces``: the trace readers (``read_trace``, ``load_trace``): LIRS,
  cache2k's 32-bit and corda's 64-bit binary traces, text and CSV, gzip, xz
  or bzip2 compressed.

``metis simulate`` (``metis_shm.cli.simulate``) is the command line; see
docs/policies.md.
"""
