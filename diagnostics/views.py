from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from diagnostics.models import Study
from hospital.tenancy import role_required


@role_required()
def worklist(request: HttpRequest) -> HttpResponse:
    studies = Study.objects.for_hospital(request.hospital)[:50]
    return render(request, "diagnostics/worklist.html", {"studies": studies})
