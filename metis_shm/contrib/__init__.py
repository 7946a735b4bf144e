"""Integrations with the frameworks users already run: Django
(``metis_shm.contrib.django``), Flask-Caching (``metis_shm.contrib.flask``)
and ASGI/FastAPI/Starlette (``metis_shm.contrib.asgi``). Each module imports
its framework only when imported itself."""
