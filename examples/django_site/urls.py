"""Routes of the Metis Django demo (see views.py)."""

import views
from django.urls import path

urlpatterns = [
    path("set", views.set_value),
    path("get", views.get_value),
    path("incr", views.incr),
    path("page", views.page),
    path("info", views.info),
]
