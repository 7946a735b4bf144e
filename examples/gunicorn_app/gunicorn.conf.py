"""gunicorn settings and hooks for the Metis demo app.

Run from this folder: ``gunicorn -c gunicorn.conf.py app:application``.
Command-line options (``--bind``, ``--workers``, ``--preload``) override the
values set here.

About ``--preload``: gunicorn then imports the app in the master before it
forks the workers. ``when_ready`` below opens the cache in the master in that
case, and every worker inherits that Cache through ``fork()``. This is
supported: a Cache opened before fork keeps working in every child (its
per-process state is refreshed after fork), so ``post_fork`` simply reuses it.
Without ``--preload`` each worker opens the cache by name in ``post_fork``; the
first one to get there creates the segment and the others attach to it.

Environment:

* ``METIS_CACHE_NAME``: cache name (default ``gunicorn-demo``);
* ``METIS_CACHE_CAPACITY``: size of a new segment (default ``16MiB``);
* ``METIS_CACHE_FAR``: a ``redis://`` URL or a JSON object of far settings:
  the cache is then the near tier of that Redis (run metisd with the same
  variables; README.md, "Two machines in front of one Redis");
* ``METIS_BIND``: address to listen on (default ``127.0.0.1:8000``);
* ``METIS_DESTROY_ON_EXIT=1``: unlink the segment when the master exits.
  Off by default, so a restart of gunicorn keeps the cached data.
"""

import os

bind = os.environ.get("METIS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("METIS_WORKERS", "4"))
worker_class = "sync"
graceful_timeout = 10
# gunicorn >= 24 opens a control socket at one fixed path per user; this demo
# does not use it, and two instances would compete for that path.
control_socket_disable = True


def when_ready(server):
    """Master, after the listening socket is up: open the cache early if preloading."""
    if server.cfg.preload_app:
        import app  # already imported by the preload; this is the same module

        app.open_cache()
        server.log.info("metis: cache %r opened in the master (preload)", app.CACHE_NAME)


def post_fork(server, worker):
    """Worker, right after fork: open the cache (or keep the inherited one)."""
    import app

    app.open_cache()
    server.log.info("metis: worker %s uses cache %r", worker.pid, app.CACHE_NAME)


def worker_exit(server, worker):
    """Worker, on its way out: detach (the segment stays)."""
    import app

    app.close_cache()


def on_exit(server):
    """Master, on shutdown: destroy the segment only when asked to."""
    if os.environ.get("METIS_DESTROY_ON_EXIT") == "1":
        from metis_shm import Cache

        name = os.environ.get("METIS_CACHE_NAME", "gunicorn-demo")
        if Cache.destroy(name):
            server.log.info("metis: destroyed cache %r", name)
