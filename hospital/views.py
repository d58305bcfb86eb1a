"""Hospital admins' pages: the audit log of their own hospital."""

from __future__ import annotations

from django import forms
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from accounts.models import User
from hospital import audit
from hospital.models import AuditEvent, Role
from hospital.tenancy import role_required

AUDIT_PAGE_SIZE = 50


class AuditFilterForm(forms.Form):
    """Filters carry public ids and action codes only, so they may live in the URL."""

    user = forms.ModelChoiceField(
        label="User", required=False, queryset=User.objects.none(), to_field_name="code", empty_label="Anyone"
    )
    action = forms.ChoiceField(label="Action", required=False, choices=[("", "Any action"), *audit.Action.choices])
    date_from = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    page = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, *args, hospital, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Only people who belong (or belonged) to this hospital can be picked.
        self.fields["user"].queryset = User.objects.filter(memberships__hospital=hospital).distinct()

    def clean(self) -> dict:
        cleaned = super().clean()
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return cleaned

    def apply(self, events):
        data = self.cleaned_data
        if data.get("user"):
            events = events.filter(actor_user=data["user"])
        if data.get("action"):
            events = events.filter(action=data["action"])
        if data.get("date_from"):
            events = events.filter(created_at__date__gte=data["date_from"])
        if data.get("date_to"):
            events = events.filter(created_at__date__lte=data["date_to"])
        return events

    def public_params(self) -> dict[str, str]:
        if not self.is_valid():
            return {}
        params = {
            key: str(self.cleaned_data[key]) for key in ("action", "date_from", "date_to") if self.cleaned_data.get(key)
        }
        if self.cleaned_data.get("user"):
            params["user"] = str(self.cleaned_data["user"].code)
        return params


@never_cache
@vary_on_headers("HX-Request")
@require_GET
@role_required(Role.HOSPITAL_ADMIN)
def audit_log(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET, hospital=request.hospital)
    status = 200
    events = AuditEvent.objects.for_hospital(request.hospital).select_related("actor_user", "actor_key")
    if form.is_valid():
        events = form.apply(events)
    else:
        events, status = events.none(), 400
    # Recorded before the page is counted, so the count and the rows agree (the
    # viewing itself is the newest event of the log it shows).
    audit.record(audit.Action.AUDIT_VIEWED, request=request, filters=sorted(form.public_params()))
    page = Paginator(events, AUDIT_PAGE_SIZE).get_page(form.cleaned_data.get("page") if form.is_valid() else 1)
    page.object_list = list(page.object_list)
    audit.name_targets(page.object_list, request.hospital)
    context = {
        "form": form,
        "page": page,
        "public_params": form.public_params(),
        "action_names": dict(audit.Action.choices),
    }
    template = "hospital/audit_log.html"
    if request.htmx and request.htmx.target == "audit-results":
        template += "#results"
    return render(request, template, context, status=status)
