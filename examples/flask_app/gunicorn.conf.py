"""gunicorn settings and hooks for the Flask + Metis demo.

Run from this folder: ``gunicorn -c gunicorn.conf.py app:app``.

Flask-Caching opens the Metis cache when ``app.py`` is imported. Without
``--preload`` that happens in each worker (``post_fork`` imports it), and the
first worker creates the segment; with ``--preload`` the master imports the
app, opens the cache once, and every worker inherits it through ``fork()``
(a Metis cache opened before fork keeps working in the children).

Environment: ``METIS_CACHE_NAME`` (default ``flask-demo``),
``METIS_CACHE_CAPACITY``, ``METIS_BIND`` (default ``127.0.0.1:8000``),
``METIS_WORKERS`` (default 4), ``METIS_DESTROY_ON_EXIT=1`` to unlink the
segment when gunicorn exits.
"""

import os

bind = os.environ.get("METIS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("METIS_WORKERS", "4"))
worker_class = "sync"
graceful_timeout = 10
control_socket_disable = True  # gunicorn >= 24: one fixed path per user otherwise


def post_fork(server, worker):
    """Worker, right after fork: import the app (opens the cache, or keeps the inherited one)."""
    import app

    server.log.info("metis: worker %s uses cache %r", worker.pid, app.CACHE_NAME)


def worker_exit(server, worker):
    """Worker, on its way out: detach (the segment stays for the others)."""
    import app

    app.cache.cache.close()


def on_exit(server):
    """Master, on shutdown: destroy the segment only when asked to."""
    if os.environ.get("METIS_DESTROY_ON_EXIT") == "1":
        from metis_shm import Cache

        name = os.environ.get("METIS_CACHE_NAME", "flask-demo")
        if Cache.destroy(name):
            server.log.info("metis: destroyed cache %r", name)
