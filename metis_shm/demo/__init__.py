"""Demos a newcomer can run, each with no arguments, each cleaning up after itself.

* ``python -m metis_shm.demo`` (metisd.py): the ``metisd`` supervisor with a
  demo configuration and worker processes that share its cache, live stats
  from its ``/stats`` endpoint, then a clean stop (the README's first
  command);
* ``python -m metis_shm.demo.embedded`` (embedded.py): worker processes
  sharing one cache with no daemon at all.
"""
