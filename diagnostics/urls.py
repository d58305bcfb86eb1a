from __future__ import annotations

from django.urls import path

from diagnostics import views

app_name = "diagnostics"

urlpatterns = [
    path("", views.worklist, name="worklist"),
    path("worklist/updates/", views.worklist_updates, name="worklist_updates"),
    path("upload/", views.upload, name="upload"),
    path("studies/<uuid:code>/", views.study_detail, name="study_detail"),
    path("studies/<uuid:code>/status/", views.study_status, name="study_status"),
    path("studies/<uuid:code>/image/", views.study_image, name="study_image"),
    path("studies/<uuid:code>/heatmap/", views.study_heatmap, name="study_heatmap"),
    path("studies/<uuid:code>/review/", views.study_review, name="study_review"),
    path("studies/<uuid:code>/analyse-again/", views.study_analyse_again, name="study_analyse_again"),
    path("studies/<uuid:code>/withdraw/", views.study_withdraw, name="study_withdraw"),
]
