"""Training consent: a hospital admin decides whether their hospital's reviewed studies
may train models served to all hospitals. Off by default; every change is audited."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from hospital import services
from hospital.models import Role
from hospital.tenancy import role_required


class ConsentForm(forms.Form):
    shares_reviews_for_training = forms.BooleanField(
        label="Share this hospital's reviewed studies to train Pleura's models",
        required=False,
        help_text="Only the pixels and the radiologists' labels leave the hospital's data: no names, IDs, "
        "dates or DICOM headers. Text printed into the image itself (a name or ID burned into the film) "
        "is not removed: leave sharing off if your radiographs carry it.",
    )


@never_cache
@require_http_methods(["GET", "POST"])
@role_required(Role.HOSPITAL_ADMIN)
def training_consent(request: HttpRequest) -> HttpResponse:
    hospital = request.hospital
    if request.method == "POST":
        form = ConsentForm(request.POST)
        if not form.is_valid():  # a boolean field cannot be invalid; kept for the contract
            return render(request, "hospital/consent.html", {"form": form, "hospital": hospital}, status=400)
        wanted = form.cleaned_data["shares_reviews_for_training"]
        if wanted != hospital.shares_reviews_for_training:
            hospital.shares_reviews_for_training = wanted
            services.update_hospital(hospital, [services.CONSENT_FIELD], actor=request.user, request=request)
            messages.success(request, "Sharing for training is now " + ("on." if wanted else "off."))
        return redirect(reverse("training_consent"))
    form = ConsentForm(initial={"shares_reviews_for_training": hospital.shares_reviews_for_training})
    return render(request, "hospital/consent.html", {"form": form, "hospital": hospital})
