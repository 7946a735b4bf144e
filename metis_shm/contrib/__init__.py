"""Integrations with what users already run: Django (``metis_shm.contrib.django``),
Flask-Caching (``metis_shm.contrib.flask``), ASGI/FastAPI/Starlette
(``metis_shm.contrib.asgi``), OpenTelemetry (``metis_shm.contrib.opentelemetry``),
and ``memoize`` (``metis_shm.contrib.memoize``, cross-process single-flight
memoization; also ``from metis_shm import memoize``). Each module imports its
framework only when imported itself; ``memoize`` needs none."""
