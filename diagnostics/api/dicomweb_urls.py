"""`/dicomweb/`: DICOMweb STOW-RS."""

from __future__ import annotations

from django.urls import re_path

from diagnostics.api import views

app_name = "dicomweb"

urlpatterns = [
    re_path(r"^studies/?$", views.StowView.as_view(), name="stow"),
]
