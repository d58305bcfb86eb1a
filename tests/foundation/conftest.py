"""Helpers for the admin tests: read a rendered admin form back into POST data."""

from __future__ import annotations

from django import forms
from django.db.models import Model

from tests.portal.conftest import make_study, model_version  # noqa: F401  (fixtures)


def _inline_form_data(response) -> dict:
    """What a browser posts for the page's inlines: each formset's management form and
    its rows' hidden inputs (read-only inlines have no others)."""
    data: dict = {}
    for inline in response.context.get("inline_admin_formsets") or []:
        formset = inline.formset
        management = formset.management_form
        data.update({management.add_prefix(name): value for name, value in management.initial.items()})
        for form in formset.forms:
            for field in form.hidden_fields():
                value = field.value()
                data[field.html_name] = value.pk if isinstance(value, Model) else value
    return data


def admin_form_data(response, **overrides) -> dict:
    """The POST body a browser would send for the admin form in `response`, changed by
    `overrides` (None removes a field, as an unticked checkbox does)."""
    form = response.context["adminform"].form
    data: dict = {}
    for name, field in form.fields.items():
        if field.disabled:
            continue
        value = form.initial.get(name, field.initial)
        value = value() if callable(value) else value
        if field.show_hidden_initial:  # the value the page showed, in its hidden input
            data[f"initial-{name}"] = str(value) if isinstance(field, forms.BooleanField) else value
        if isinstance(field, forms.BooleanField):
            if value:
                data[name] = "on"
            continue
        if value is None:
            continue
        if isinstance(value, list | tuple):
            value = [item.pk if isinstance(item, Model) else item for item in value]
        elif isinstance(value, Model):
            value = value.pk
        data[name] = value
    data.update(_inline_form_data(response))
    data["_save"] = "Save"
    for name, value in overrides.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    return data


def changelist_rows(response) -> list:
    return list(response.context["cl"].result_list)
