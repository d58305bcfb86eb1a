from __future__ import annotations

from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("login/", views.PleuraLoginView.as_view(), name="login"),
    path("logout/", views.PleuraLogoutView.as_view(), name="logout"),
    path("password/", views.PleuraPasswordChangeView.as_view(), name="password_change"),
    path("hospital/", views.switch_hospital, name="switch_hospital"),
]
