"""`/dicomweb/`: DICOMweb STOW-RS, to all studies or to one study."""

from __future__ import annotations

from django.urls import re_path

from diagnostics.api import views

app_name = "dicomweb"

urlpatterns = [
    re_path(r"^studies/?$", views.StowView.as_view(), name="stow"),
    re_path(r"^studies/(?P<study_instance_uid>[^/]+)/?$", views.StowView.as_view(), name="stow-study"),
]
