from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, reverse_lazy
from django.views.generic import RedirectView

from diagnostics import health, performance
from diagnostics.metrics import metrics_view
from hospital import consent

handler400 = "config.errors.bad_request"
handler403 = "config.errors.permission_denied"
handler404 = "config.errors.page_not_found"
handler500 = "config.errors.server_error"

admin.site.site_header = "Pleura administration"
admin.site.site_title = "Pleura administration"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # The admin's own password page would change a password without an audit event; the
    # portal's records one (accounts.views.PleuraPasswordChangeView).
    path("admin/password_change/", RedirectView.as_view(url=reverse_lazy("accounts:password_change"))),
    path("admin/", admin.site.urls),
    path("api/v1/", include("diagnostics.api.urls")),
    path("dicomweb/", include("diagnostics.api.dicomweb_urls")),
    path("accounts/", include("accounts.urls")),
    path("hospital/consent/", consent.training_consent, name="training_consent"),
    path("hospital/", include("hospital.urls")),
    path("models/performance/", performance.performance, name="model_performance"),
    path("", include("diagnostics.urls")),
    # Before django_prometheus's own /metrics: adds the queue depth, multiprocess-aware.
    path("metrics", metrics_view, name="metrics"),
    path("", include("django_prometheus.urls")),
]
