from __future__ import annotations

from django.urls import path

from hospital import views

app_name = "hospital"

urlpatterns = [
    path("audit/", views.audit_log, name="audit_log"),
]
