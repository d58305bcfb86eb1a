"""`/api/v1/`: studies, their images, and the OpenAPI schema with its interactive docs."""

from __future__ import annotations

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from diagnostics.api import schema, views

app_name = "api"

# Registers the integration-key security scheme with drf-spectacular.
_ = schema.IntegrationKeyScheme

urlpatterns = [
    # With or without the trailing slash, every route: APPEND_SLASH would answer an EMR's
    # POST to `studies` with a redirect that clients follow as a GET, answered 200 with the
    # list, and the study it sent would never be stored.
    re_path(r"^studies/?$", views.StudyListCreateView.as_view(), name="study-list"),
    re_path(r"^studies/search/?$", views.StudySearchView.as_view(), name="study-search"),
    re_path(r"^studies/(?P<code>[^/]+)/?$", views.StudyDetailView.as_view(), name="study-detail"),
    re_path(r"^studies/(?P<code>[^/]+)/image/?$", views.StudyImageView.as_view(), name="study-image"),
    re_path(r"^studies/(?P<code>[^/]+)/heatmap/?$", views.StudyHeatmapView.as_view(), name="study-heatmap"),
    re_path(r"^studies/(?P<code>[^/]+)/withdraw/?$", views.StudyWithdrawView.as_view(), name="study-withdraw"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its set-up script as a file of this site: the CSP nginx sends
    # (script-src 'self') blocks the inline one of SpectacularSwaggerView, leaving a blank page.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api:schema"), name="docs"),
]
