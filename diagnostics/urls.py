from __future__ import annotations

from django.urls import path

from diagnostics import views

app_name = "diagnostics"

urlpatterns = [
    path("", views.worklist, name="worklist"),
]
