"""Hospital admins' pages: the audit log of their own hospital."""

from __future__ import annotations

import uuid

from django import forms
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from accounts.models import User
from config.safe_paths import UUID_TEXT
from hospital import audit
from hospital.days import within_days
from hospital.models import AuditEvent, IntegrationKey, Role
from hospital.tenancy import role_required

AUDIT_PAGE_SIZE = 50


class AuditFilterForm(forms.Form):
    """Filters carry public ids and action codes only, so they may live in the URL."""

    user = forms.ModelChoiceField(
        label="Person (by or about)",
        required=False,
        queryset=User.objects.none(),
        to_field_name="code",
        empty_label="Anyone",
    )
    key = forms.ModelChoiceField(
        label="EMR key", required=False, queryset=IntegrationKey.objects.none(), to_field_name="code", empty_label="Any"
    )
    action = forms.ChoiceField(label="Action", required=False, choices=[("", "Any action"), *audit.Action.choices])
    # A study's public code (its page's address): "who opened this patient's film" is asked
    # of one study, whose code is no PHI (admin review). Its page's address pasted is taken.
    # The filters travel in the URL: the browser refuses to send anything without a code in
    # it, such as a patient's ID typed here by mistake.
    study = forms.CharField(
        label="Study code",
        required=False,
        max_length=300,
        widget=forms.TextInput(
            attrs={
                "pattern": rf".*{UUID_TEXT.pattern}.*",
                "title": "A study's code, or the address of its page (…/studies/<code>/); never a patient ID.",
            }
        ),
    )
    date_from = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    page = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, *args, hospital, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Only people who belong (or belonged) to this hospital can be picked, and its own keys.
        self.fields["user"].queryset = User.objects.filter(memberships__hospital=hospital).distinct()
        self.fields["key"].queryset = IntegrationKey.objects.filter(hospital=hospital).order_by("name")

    def clean_study(self) -> uuid.UUID | None:
        typed = self.cleaned_data.get("study", "").strip()
        if not typed:
            return None
        found = UUID_TEXT.search(typed)
        if found is None:
            raise forms.ValidationError("Paste a study's code, or the address of its page (…/studies/<code>/).")
        return uuid.UUID(found.group(0))

    def clean(self) -> dict:
        cleaned = super().clean()
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return cleaned

    def apply(self, events):
        data = self.cleaned_data
        if person := data.get("user"):
            # What they did and what was done about them: a dismissed person's tries to sign
            # back in are by no one (operator review: "nothing" answered that question).
            events = events.filter(Q(actor_user=person) | Q(target_type="user", target_id=str(person.code)))
        if data.get("key"):
            events = events.filter(actor_key=data["key"])
        if data.get("study"):
            # Its own events, and the lists that showed it among others (a worklist page, an
            # EMR's feed). Found first, by their indexes, then paged: asked for the newest
            # page at once, PostgreSQL walked the whole trail backwards by time (scale review).
            about = events.about_study(str(data["study"])).order_by().values_list("pk", flat=True)
            events = events.filter(pk__in=list(about))
        if data.get("action"):
            events = events.filter(action=data["action"])
        return within_days(events, data.get("date_from"), data.get("date_to"))

    def public_params(self) -> dict[str, str]:
        if not self.is_valid():
            return {}
        params = {
            key: str(self.cleaned_data[key])
            for key in ("action", "study", "date_from", "date_to")
            if self.cleaned_data.get(key)
        }
        for chosen in ("user", "key"):
            if self.cleaned_data.get(chosen):
                params[chosen] = str(self.cleaned_data[chosen].code)
        return params


def _detail_value(value) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value) or "—"
    if isinstance(value, dict):
        return ", ".join(f"{name} {_detail_value(inner)}" for name, inner in value.items()) or "—"
    return str(value)


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
    for event in page.object_list:
        # What the event's detail says (public ids, counts, labels: never PHI, hospital.audit):
        # a heatmap's viewing read as the image's, and an agreement as a disagreement (admin review).
        # A list's study codes are left out: its count says how many, and the study filter
        # finds the lists that showed one.
        event.detail_items = sorted(
            (str(name), _detail_value(value)) for name, value in (event.detail or {}).items() if name != "studies"
        )
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
