"""The portal's pages: worklist, upload, study view, images and reviews.

Every view starts from the active hospital (`hospital.tenancy`): outsiders get 404,
members without the right role 403. HTMX requests get a partial of the same template.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.core.cache import caches
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from accounts.sessions import polled
from diagnostics.forms import ReviewForm, UploadForm, WorklistFilterForm
from diagnostics.imaging import WARNINGS, RejectedUpload
from diagnostics.media import protected_file_response
from diagnostics.models import Prediction, Review, Study
from diagnostics.percent import probability_and_threshold
from diagnostics.reviews import ResultChangedMeanwhile, StudyWithdrawn, current_prediction, save_review
from diagnostics.services import (
    analyse_again,
    display_image_of,
    ingest_upload,
    may_analyse_again,
    record_refused_upload,
)
from diagnostics.withdrawal import WithdrawalRefused, withdraw_study
from hospital import audit
from hospital.models import AuditEvent, Role
from hospital.tenancy import NotInThisHospital, get_object_for_request, has_role, role_required

WORKLIST_PAGE_SIZE = 25
# Studies a single worklist poll may ask about: one page's worth.
MAX_POLLED_STUDIES = WORKLIST_PAGE_SIZE
PENDING = (Study.Status.QUEUED, Study.Status.PROCESSING)
# Who may have a failed study analysed again: those who upload studies and read them.
CLINICAL_ROLES = (Role.DOCTOR, Role.RADIOLOGIST)
REVIEWER_ROLES = (Role.RADIOLOGIST,)


def person_name(value: str) -> str:
    """A DICOM person name (Family^Given^Middle^Prefix^Suffix) as people write it."""
    parts = [part.strip() for part in (value or "").split("^")]
    family, given = [*parts, "", ""][:2]
    rest = " ".join(p for p in [given, *parts[2:3]] if p)
    return f"{family}, {rest}" if family and rest else (family or rest)


def _name_rows(studies) -> list[Study]:
    studies = list(studies)
    for study in studies:
        study.patient_display = person_name(study.patient_name)
    return studies


def warning_text(code: str) -> str:
    """An intended-use warning code (Study.warnings, set by ingestion) in words."""
    return WARNINGS.get(code, str(code).replace("_", " ").capitalize() + ".")


def _count_of(rows: QuerySet) -> Subquery:
    return Subquery(rows.order_by().values("study").annotate(n=Count("pk")).values("n")[:1])


def _worklist_queryset(hospital) -> QuerySet[Study]:
    """The hospital's studies with their current result and review state, in one query."""
    shown = Prediction.objects.shown().filter(study=OuterRef("pk")).order_by("-created_at", "-id")
    reviews = Review.objects.filter(study=OuterRef("pk"))
    return Study.objects.for_hospital(hospital).annotate(
        current_label=Subquery(shown.values("label")[:1]),
        current_probability=Subquery(shown.values("probability")[:1]),
        current_threshold=Subquery(shown.values("threshold")[:1]),
        is_reviewed=Exists(reviews),
        is_disputed=Exists(reviews.filter(verdict=Review.Verdict.DISAGREE)),
        # How many of how many: when radiologists split, "radiologist: Normal" read as the
        # radiologists' finding, though another had agreed with the model (learning-loop review).
        reviews_count=_count_of(reviews),
        disputes_count=_count_of(reviews.filter(verdict=Review.Verdict.DISAGREE)),
        # The latest correction, shown beside "Disputed": the list kept the model's red
        # "Pneumonia" with nothing to say a radiologist had found otherwise (UX review).
        corrected_label=Subquery(
            reviews.filter(verdict=Review.Verdict.DISAGREE).order_by("-updated_at", "-id").values("correct_label")[:1]
        ),
    )


@never_cache
@vary_on_headers("HX-Request")
@require_http_methods(["GET", "POST"])
@role_required()
def worklist(request: HttpRequest) -> HttpResponse:
    # The search box may hold a patient ID, so it is read from POST bodies only (see
    # WorklistFilterForm); GET serves the PHI-free filters and pagination links.
    data = request.POST if request.method == "POST" else request.GET.copy()
    if request.method == "GET":
        data.pop("q", None)
    form = WorklistFilterForm(data)
    if not form.is_valid():
        # No rows rather than every row: the controls would still show the filters asked for.
        template = "diagnostics/worklist.html#results" if request.htmx else "diagnostics/worklist.html"
        return render(request, template, {"form": form, "page": None}, status=400)
    studies = form.apply(_worklist_queryset(request.hospital))  # filed ones, unless withdrawn ones are asked for
    page = Paginator(studies, WORKLIST_PAGE_SIZE).get_page(form.cleaned_data.get("page"))
    audit.record(
        audit.Action.STUDY_LISTED, request=request, page=page.number, count=len(page.object_list),
        studies=audit.study_codes(page.object_list),
    )  # fmt: skip
    context = {
        "form": form,
        "page": page,
        "public_params": form.public_params(),
        "public_query": urlencode(form.public_params()),
        "rows": _name_rows(page.object_list),
        # A withdrawn row (listed when asked for) is not followed: the updates take it off the page.
        "pending_codes": [str(s.code) for s in page.object_list if s.status in PENDING and not s.withdrawn_at],
    }
    template = "diagnostics/worklist.html"
    if request.htmx and request.htmx.target == "worklist-results":
        template += "#results"
    return render(request, template, context)


@never_cache
@require_GET
@polled
@role_required()
def worklist_updates(request: HttpRequest) -> HttpResponse:
    """Fresh rows for the worklist's still-pending studies (`?s=<code>` repeated).

    The worklist polls this one URL for all its queued/processing rows; the response
    swaps the rows out-of-band and carries a new poller for those still pending, or
    none, which stops the polling.
    """
    try:
        codes = {uuid.UUID(value) for value in request.GET.getlist("s")}
    except ValueError as exc:
        raise Http404("No such study.") from exc
    if not codes or len(codes) > MAX_POLLED_STUDIES:
        return HttpResponse(f"Ask for 1 to {MAX_POLLED_STUDIES} studies.", status=400, content_type="text/plain")
    rows = _name_rows(_worklist_queryset(request.hospital).filter(code__in=codes))
    # Any code outside the active hospital: 404, and nothing about the others either; a
    # code of another hospital's study is kept in that hospital's trail.
    if len(rows) != len(codes):
        missing = codes - {study.code for study in rows}
        raise NotInThisHospital(Study, {"code__in": missing}, via="portal", words="No such study.")
    # A row withdrawn since the page showed it leaves it: kept, its result was announced as
    # the patient's, whose film it may not be (withdrawal review). The announcement names
    # no patient, so it reads nothing worth a trail (diff review: it did, unrecorded).
    withdrawn = [study for study in rows if study.is_withdrawn]
    rows = [study for study in rows if not study.is_withdrawn]
    pending = [str(s.code) for s in rows if s.status in PENDING]
    settled = [study for study in rows if study.status not in PENDING]
    if settled:
        # A result reaches the page here: recorded as the worklist's own reading is. A
        # settled row leaves the poller, so each is recorded once.
        audit.record(
            audit.Action.STUDY_LISTED, request=request, via="worklist update", count=len(settled),
            studies=audit.study_codes(settled),
        )  # fmt: skip
    if first_seen := _first_polled_in_this_session(request, pending):
        # Rows still pending carry the patient's details too, and are re-sent every 3 s:
        # recorded once a session each, which does not bury the trail (security review:
        # a study's code alone read its patient's name and ID without a trace).
        audit.record(
            audit.Action.STUDY_LISTED, request=request, via="worklist update, pending", count=len(first_seen),
            studies=first_seen,
        )  # fmt: skip
    context = {"rows": rows, "pending_codes": pending, "settled": settled, "withdrawn": withdrawn}
    return render(request, "diagnostics/worklist.html#updates", context)


def _first_polled_in_this_session(request: HttpRequest, codes: list[str]) -> list[str]:
    """Those of `codes` this session's polls show for the first time, remembered in the
    cache (Redis in production): written to the session, a poll would extend it, and a
    page left open would never be signed out for idleness. Without the cache, each counts."""
    if not codes:
        return []
    session = request.session.session_key or ""
    keys = [f"pleura:polled:{session}:{code}" for code in codes]
    cache = caches["default"]
    try:
        # One round trip for a poll that shows nothing new, as most do (one every 3 s for
        # each open page), not one per row; `add` claims each new row atomically.
        seen = cache.get_many(keys)
        return [
            code
            for code, key in zip(codes, keys, strict=True)
            if key not in seen and cache.add(key, 1, settings.SESSION_COOKIE_AGE)
        ]
    except Exception:  # the cache's client when Redis is down: the trail errs on recording
        return list(codes)


@never_cache
@require_http_methods(["GET", "POST"])
@role_required(*CLINICAL_ROLES)
def upload(request: HttpRequest) -> HttpResponse:
    """Portal upload, for doctors and radiologists (as the API's: a hospital admin runs
    accounts, not clinical studies). The page's script posts one file per request (for
    per-file progress) and gets back that file's result; without JavaScript the form
    posts all files at once and the whole page comes back with every result."""
    form = UploadForm(request.POST if request.method == "POST" else None)
    if request.method != "POST":
        return render(request, "diagnostics/upload.html", _upload_context(form, []))
    files = request.FILES.getlist("files")
    if request.htmx and len(files) > 1:
        # Refused before any is stored: all were stored, then answered with one empty 400,
        # and a client sending them again stored them twice.
        form.is_valid()
        form.add_error(None, "Send one file per request: this page uploads each file on its own.")
        return render(request, "diagnostics/upload.html#form-errors", {"form": form}, status=400)
    results, status = _upload_files(request, form, files)
    if not request.htmx:
        return render(request, "diagnostics/upload.html", _upload_context(form, results), status=status)
    if not files:
        return render(request, "diagnostics/upload.html#form-errors", {"form": form}, status=400)
    # The page's script: one file, one result, refused with the form's words if need be.
    result = results[0] if results else {**_no_result(files[0]), "status": status, "error": _form_error_text(form)}
    response = render(request, "diagnostics/upload.html#result", {"result": result}, status=status)
    for name, value in result["headers"].items():  # Retry-After on a 503
        response[name] = value
    return response


def _upload_files(request: HttpRequest, form: UploadForm, files: list) -> tuple[list[dict], int]:
    """Each file's result and the response's status; no results if the form refused them all."""
    if not form.is_valid():
        return [], 400
    if not files:
        form.add_error(None, "Choose at least one file to upload.")
        return [], 400
    results = [_ingest_one(request, f, form.cleaned_data) for f in files]
    return results, (results[0]["status"] if len(results) == 1 else 200)


def _form_error_text(form: UploadForm) -> str:
    return " ".join(error for errors in form.errors.values() for error in errors)


def _no_result(upload_file) -> dict:
    return {"name": upload_file.name, "status": 200, "study": None, "queued": False, "error": "", "headers": {}}


def _upload_context(form: UploadForm, results: list[dict]) -> dict:
    return {"form": form, "results": results, "max_upload_mb": settings.MAX_UPLOAD_BYTES // (1024 * 1024)}


def _ingest_one(request: HttpRequest, upload_file, identifiers: dict) -> dict:
    result = _no_result(upload_file)
    if upload_file.size > settings.MAX_UPLOAD_BYTES:
        limit_mb = settings.MAX_UPLOAD_BYTES // (1024 * 1024)
        words = f"The file is larger than the {limit_mb} MB limit."
        record_refused_upload(
            request=request, hospital=request.hospital, source=Study.Source.PORTAL, status_code=413, reason=words,
            size=upload_file.size,
        )  # fmt: skip
        return {**result, "status": 413, "error": words}
    try:
        study, queued = ingest_upload(
            hospital=request.hospital,
            data=upload_file.read(),
            source=Study.Source.PORTAL,
            user=request.user,
            patient_id=identifiers.get("patient_id", ""),
            accession_number=identifiers.get("accession_number", ""),
            request=request,
        )
    except RejectedUpload as exc:
        return {**result, "status": exc.status_code, "error": str(exc.detail), "headers": exc.headers}
    # Whose film it was filed under, in the answer: the upload page keeps the IDs typed for
    # the files before, so the doctor sees at once a film filed under the wrong patient.
    study.patient_display = person_name(study.patient_name)
    return {**result, "status": 201 if queued else 200, "study": study, "queued": queued}


def _study_context(
    request: HttpRequest, study: Study, review_form: ReviewForm | None = None, withdraw_error: str = ""
) -> dict:
    prediction = current_prediction(study)
    reviews = list(study.reviews.select_related("radiologist").prefetch_related("revisions"))
    is_radiologist = has_role(request, REVIEWER_ROLES)
    # A review agrees or disagrees with a result the radiologist has seen: none before it.
    can_review = is_radiologist and prediction is not None and not study.is_withdrawn
    can_analyse_again = has_role(request, CLINICAL_ROLES) and may_analyse_again(study)
    own = next((r for r in reviews if r.radiologist_id == request.user.pk), None)
    if can_review and review_form is None:
        initial = {"verdict": own.verdict, "note": own.note} if own else {}
        if own and own.verdict == Review.Verdict.DISAGREE:
            # After an agreement the model's label would stand pre-selected as the correction,
            # and switching to Disagree was refused as "the model's finding".
            initial["correct_label"] = own.correct_label
        review_form = ReviewForm(initial=initial, model_label=prediction.label)
    return {
        "study": study,
        "patient_display": person_name(study.patient_name),
        "prediction": prediction,
        "reviews": reviews,
        "own_review": own,
        "can_review": can_review,
        "is_radiologist": is_radiologist,
        "can_analyse_again": can_analyse_again,
        "can_withdraw": has_role(request, CLINICAL_ROLES) and not study.is_withdrawn,
        "can_read_trail": has_role(request, (Role.HOSPITAL_ADMIN,)),
        "withdraw_error": withdraw_error,
        "review_form": review_form,
        "warnings": [warning_text(code) for code in study.warnings or []],
        **_percents(prediction),
        "timeline": _timeline(study, prediction, reviews),
    }


def _percents(prediction: Prediction | None) -> dict:
    if prediction is None:
        return {"probability_pct": "", "threshold_pct": "", "bar_pct": ""}
    probability, threshold = probability_and_threshold(prediction.probability, prediction.threshold)
    return {
        "probability_pct": probability,
        "threshold_pct": threshold,
        "bar_pct": f"{prediction.probability * 100:.1f}",  # the bar's width: the probability itself
    }


def _timeline(study: Study, prediction: Prediction | None, reviews: list[Review]) -> list[dict]:
    uploader = study.uploaded_by or study.uploaded_by_key
    events = [{"at": study.created_at, "what": "Uploaded", "who": str(uploader or study.get_source_display())}]
    events += _earlier_rounds(study)
    if study.queued_at:
        events.append({"at": study.queued_at, "what": "Queued for analysis", "who": ""})
    if study.started_at:
        events.append({"at": study.started_at, "what": "Analysis started", "who": ""})
    if prediction:
        events.append({"at": prediction.created_at, "what": "Predicted", "who": str(prediction.model_version)})
    if study.status == Study.Status.FAILED:
        events.append({"at": study.completed_at or study.updated_at, "what": "Analysis failed", "who": ""})
    # Pipeline steps in the order they happen; reviews after them, oldest first.
    later = [
        {"at": r.updated_at, "what": f"Reviewed: {r.get_verdict_display().lower()}", "who": str(r.radiologist)}
        for r in reviews
    ]
    if study.is_withdrawn:
        withdrawn_by = study.withdrawn_by or study.withdrawn_by_key
        later.append({"at": study.withdrawn_at, "what": "Withdrawn as filed in error", "who": str(withdrawn_by or "")})
    return events + sorted(later, key=lambda e: e["at"])


# What happened to a study before it was queued this time, from its hospital's trail.
_EARLIER_ROUND_EVENTS = {
    audit.Action.PREDICTION_FAILED.value: "Analysis failed",
    audit.Action.STUDY_ANALYSED_AGAIN.value: "Analysed again",
}


def _earlier_rounds(study: Study) -> list[dict]:
    """Failures and requests to analyse again before the study's last queueing: with only
    its current round on the page, a study analysed again read as freshly uploaded, its
    failure and who asked for the new analysis gone (portal review). Read from the trail
    between the upload and that queueing, which is one moment for most studies."""
    if not study.queued_at or study.queued_at <= study.created_at + timedelta(seconds=1):
        return []  # queued with its upload: no earlier round, and no query
    earlier = (
        AuditEvent.objects.for_hospital(study.hospital)
        # The request that queued it again records it just after: a minute's margin, where
        # a failure after the queueing is this round's own, shown from the study.
        .filter(created_at__gte=study.created_at, created_at__lte=study.queued_at + timedelta(minutes=1))
        .filter(target_type="study", target_id=str(study.code))
        .filter(
            Q(action=audit.Action.PREDICTION_FAILED, created_at__lt=study.queued_at)
            | Q(action=audit.Action.STUDY_ANALYSED_AGAIN)
        )
        .select_related("actor_user")
        .order_by("created_at", "id")
    )
    return [
        {"at": event.created_at, "what": _EARLIER_ROUND_EVENTS[event.action], "who": str(event.actor_user or "")}
        for event in earlier
    ]


def _get_study(request: HttpRequest, code) -> Study:
    studies = Study.objects.select_related("uploaded_by", "uploaded_by_key", "withdrawn_by", "withdrawn_by_key")
    return get_object_for_request(request, studies, code=code)


@never_cache
@require_GET
@role_required()
def study_detail(request: HttpRequest, code) -> HttpResponse:
    study = _get_study(request, code)
    audit.record(audit.Action.STUDY_VIEWED, request=request, target=study)
    return render(request, "diagnostics/study_detail.html", _study_context(request, study))


@never_cache
@require_GET
@polled
@role_required()
def study_status(request: HttpRequest, code) -> HttpResponse:
    """The study view polls this while the study is pending; once it is done the
    page reloads itself to show the result (HX-Refresh)."""
    study = _get_study(request, code)
    if not request.htmx:
        return redirect("diagnostics:study_detail", code=study.code)
    response = render(request, "diagnostics/study_detail.html#status", {"study": study})
    if study.status not in PENDING:
        response["HX-Refresh"] = "true"
    return response


@require_GET
@role_required()
def study_image(request: HttpRequest, code) -> HttpResponse:
    study = _get_study(request, code)
    response = protected_file_response(
        display_image_of(study), content_type="image/png", download_name=f"{study.code}.png"
    )
    audit.record(audit.Action.IMAGE_VIEWED, request=request, target=study, image="display")
    return response


@require_GET
@role_required()
def study_heatmap(request: HttpRequest, code) -> HttpResponse:
    study = _get_study(request, code)
    prediction = current_prediction(study)
    if prediction is None:
        raise Http404("This study has no heatmap.")
    response = protected_file_response(
        prediction.heatmap, content_type="image/png", download_name=f"{study.code}-heatmap.png"
    )
    audit.record(audit.Action.IMAGE_VIEWED, request=request, target=study, image="heatmap")
    return response


@never_cache
@require_POST
@role_required()
def study_analyse_again(request: HttpRequest, code) -> HttpResponse:
    """Queue a failed study again; the study's page then follows it as any queued one.
    Asked of a study that is no longer failed (a second click, another doctor), it only
    shows the study."""
    study = _get_study(request, code)  # outsiders: 404, before anything about roles
    if not has_role(request, CLINICAL_ROLES):
        raise PermissionDenied("Only doctors and radiologists can have a study analysed again.")
    analyse_again(study, request=request)
    return redirect("diagnostics:study_detail", code=study.code)


@never_cache
@require_http_methods(["GET", "POST"])
@role_required()
def study_withdraw(request: HttpRequest, code) -> HttpResponse:
    """Withdraw a study filed in error (diagnostics.withdrawal), with the reason typed.
    Asked again of a withdrawn study (a second click, another doctor), it only shows it.
    A refusal shows the study's page again with the text typed and the form in focus; that
    page's address is this one, so reloading it (a GET) goes back to the study's."""
    study = _get_study(request, code)  # outsiders: 404, before anything about roles
    if request.method == "GET":
        return redirect(reverse("diagnostics:study_detail", args=[study.code]) + "#withdraw")
    if not has_role(request, CLINICAL_ROLES):
        raise PermissionDenied("Only doctors and radiologists can withdraw a study.")
    typed = request.POST.getlist("reason")
    try:
        if len(typed) > 1:
            raise WithdrawalRefused("The reason was sent twice: send it once.")
        withdrawn = withdraw_study(study, reason=typed[0] if typed else "", user=request.user, request=request)
    except WithdrawalRefused as exc:
        audit.record(audit.Action.STUDY_VIEWED, request=request, target=study)
        context = _study_context(request, study, withdraw_error=str(exc))
        context["withdraw_reason"] = typed[0] if typed else ""
        return render(request, "diagnostics/study_detail.html", context, status=400)
    if withdrawn:
        messages.success(request, "The study is withdrawn. Upload the film again under the right patient if needed.")
    return redirect("diagnostics:study_detail", code=study.code)


def _result_not_the_one_seen(request: HttpRequest, study: Study, prediction: Prediction | None) -> HttpResponse | None:
    """409 when the result the review form was shown with is not the study's result now
    (none yet, or a new analysis meanwhile): an 'Agree' would otherwise be saved for a
    label the radiologist never saw, and go into the training export as confirmed."""
    seen = request.POST.get("reviewed_prediction", "")
    if prediction is not None and seen == str(prediction.pk):
        return None
    words = (
        "There is no model result to review yet, so nothing was saved."
        if prediction is None
        else "The model's result on this study changed after you opened it, so nothing was saved. "
        "Reload the page to review the result now shown."
    )
    return _review_refused(request, study, words)


def _review_refused(request: HttpRequest, study: Study, words: str) -> HttpResponse:
    """409 in `words` to the review form's htmx request; without JavaScript, the study's
    page again with them."""
    if request.htmx:
        return HttpResponse(words, status=409, content_type="text/plain; charset=utf-8")
    messages.error(request, words)
    return redirect(reverse("diagnostics:study_detail", args=[study.code]) + "#reviews")


def _opened_by_someone_else(request: HttpRequest, study: Study) -> HttpResponse | None:
    """409 when the review form was served to another user than the one signed in now.
    A review kept through an ended session is saved after signing in again in another
    tab (app.js sends the new CSRF token); signed in there as another radiologist, the
    first one's finding was saved and audited as theirs (diff review)."""
    opened_by = request.POST.get("signed_in_as", "")
    if not opened_by or opened_by == str(request.user.code):
        return None
    words = "This page was opened by another user, so nothing was saved. Reload it to review as yourself."
    return _review_refused(request, study, words)


@never_cache
@require_POST
@role_required()
def study_review(request: HttpRequest, code) -> HttpResponse:
    # The study is resolved before the role is checked: an outsider learns nothing
    # (404) even when their role could never review, a doctor of the hospital gets 403.
    study = _get_study(request, code)
    if not has_role(request, REVIEWER_ROLES):
        raise PermissionDenied("Only radiologists can review studies.")
    if (refusal := _opened_by_someone_else(request, study)) is not None:
        return refusal
    prediction = current_prediction(study)
    if (refusal := _result_not_the_one_seen(request, study, prediction)) is not None:
        return refusal
    form = ReviewForm(request.POST, model_label=prediction.label)
    if not form.is_valid():
        context = _study_context(request, study, review_form=form)
        # The study's reviews again (the htmx part) or its whole page: a view like any other;
        # the part's notes were read without a trace (security review).
        audit.record(
            audit.Action.STUDY_VIEWED, request=request, target=study, **({"part": "reviews"} if request.htmx else {})
        )
        if request.htmx:
            return render(request, "diagnostics/study_detail.html#reviews", context, status=400)
        return render(request, "diagnostics/study_detail.html", context, status=400)
    try:
        _, created = save_review(
            study=study,
            radiologist=request.user,
            verdict=form.cleaned_data["verdict"],
            correct_label=form.cleaned_data["correct_label"],
            note=form.cleaned_data["note"],
            request=request,
            seen_prediction=prediction,
        )
    except ResultChangedMeanwhile:
        return _result_not_the_one_seen(request, study, current_prediction(study))
    except StudyWithdrawn:
        words = "This study was withdrawn as filed in error, so it takes no reviews and nothing was saved."
        return _review_refused(request, study, words)
    if not request.htmx:
        messages.success(request, "Your review has been saved.")
        return redirect(reverse("diagnostics:study_detail", args=[study.code]) + "#reviews")
    context = _study_context(request, study)
    context["saved"] = "Review saved." if created else "Review updated."
    return render(request, "diagnostics/study_detail.html#reviews", context)
