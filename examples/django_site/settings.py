"""Settings of the Metis Django demo: one cache, shared by every worker process.

Environment:

* ``METIS_CACHE_NAME``: the Metis cache name, i.e. ``LOCATION`` (default ``django-demo``);
* ``METIS_CACHE_CAPACITY``: size of the segment when it is created (default ``16MiB``);
* ``DJANGO_SECRET_KEY``: a secret key (a fixed demo value otherwise).
"""

import os

DEBUG = False
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "metis-demo-not-secret")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "urls"
WSGI_APPLICATION = "wsgi.application"
INSTALLED_APPS: list[str] = []
DATABASES: dict = {}
USE_TZ = True
MIDDLEWARE = ["views.WorkerPidMiddleware"]

CACHES = {
    "default": {
        "BACKEND": "metis_shm.contrib.django.MetisCache",
        "LOCATION": os.environ.get("METIS_CACHE_NAME", "django-demo"),
        "TIMEOUT": 300,
        "KEY_PREFIX": "demo",
        "OPTIONS": {"capacity": os.environ.get("METIS_CACHE_CAPACITY", "16MiB")},
    }
}
