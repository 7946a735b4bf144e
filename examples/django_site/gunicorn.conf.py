"""gunicorn settings for the Metis Django demo.

Run from this folder: ``gunicorn -c gunicorn.conf.py wsgi:application``.
No hook is needed to open the cache: the backend opens it lazily in each
worker on first use (and a Cache inherited through fork, with ``--preload``,
keeps working). ``METIS_DESTROY_ON_EXIT=1`` unlinks the segment when the
master exits; by default it outlives gunicorn.
"""

import os

bind = os.environ.get("METIS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("METIS_WORKERS", "4"))
worker_class = "sync"
graceful_timeout = 10
raw_env = ["DJANGO_SETTINGS_MODULE=settings"]
# gunicorn >= 24 opens a control socket at one fixed path per user; this demo
# does not use it, and two instances would compete for that path.
control_socket_disable = True


def on_exit(server):
    """Master, on shutdown: destroy the segment only when asked to."""
    if os.environ.get("METIS_DESTROY_ON_EXIT") == "1":
        from metis_shm import Cache

        name = os.environ.get("METIS_CACHE_NAME", "django-demo")
        if Cache.destroy(name):
            server.log.info("metis: destroyed cache %r", name)
