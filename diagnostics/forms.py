"""Forms of the portal: worklist filters, the upload form and the radiologist's review."""

from __future__ import annotations

from django import forms
from django.db.models import Exists, OuterRef, Q, QuerySet

from diagnostics.models import Label, Review, Study
from hospital.days import within_days

REVIEWED_CHOICES = [("", "Any"), ("yes", "Reviewed"), ("no", "Not reviewed")]


WITHDRAWN = "withdrawn"


class WorklistFilterForm(forms.Form):
    """Filters of the worklist. `q` (accession or patient ID) is PHI-bearing.

    The view binds `q` only from a POST body, never from the query string, so a patient
    ID typed into the search box never lands in a URL, browser history, a proxy's access
    log or a Referer header. The other filters carry no PHI and also work as GET links.
    """

    q = forms.CharField(
        label="Accession or patient ID",
        required=False,
        max_length=64,
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "Exact accession or patient ID", "autocomplete": "off"}
        ),
    )
    # Withdrawn studies are listed only when asked for: kept for the record, they were found
    # nowhere but by their address (withdrawal review).
    status = forms.ChoiceField(
        label="Status",
        required=False,
        choices=[("", "Any status"), *Study.Status.choices, (WITHDRAWN, "Withdrawn (filed in error)")],
    )
    label = forms.ChoiceField(label="Model says", required=False, choices=[("", "Any"), *Label.choices])
    # "Result" filtered on the model's label alone: a pneumonia a radiologist found where the
    # model said normal was missing from a search for pneumonia (portal review).
    finding = forms.ChoiceField(label="Radiologist found", required=False, choices=[("", "Any"), *Label.choices])
    reviewed = forms.ChoiceField(label="Review", required=False, choices=REVIEWED_CHOICES)
    date_from = forms.DateField(label="Received from", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label="Received to", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    page = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    PUBLIC_FIELDS = ("status", "label", "finding", "reviewed", "date_from", "date_to")

    def clean(self) -> dict:
        cleaned = super().clean()
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return cleaned

    def apply(self, queryset: QuerySet[Study]) -> QuerySet[Study]:
        """Narrow an annotated worklist queryset (see `views._worklist_queryset`)."""
        data = self.cleaned_data if self.is_valid() else {}
        if q := (data.get("q") or "").strip():
            # The matches first, by their indexes (in any case), then the page: asked for the
            # newest page at once, PostgreSQL walked every study of the hospital backwards by
            # date (325 ms over 300,000; scale review).
            found = queryset.filter(Q(accession_number__iexact=q) | Q(patient_id__iexact=q))
            queryset = queryset.filter(pk__in=list(found.order_by().values_list("pk", flat=True)))
        status = data.get("status")
        queryset = queryset.filter(withdrawn_at__isnull=status != WITHDRAWN)
        if status and status != WITHDRAWN:
            queryset = queryset.filter(status=status)
        if label := data.get("label"):
            queryset = queryset.filter(current_label=label)
        if finding := data.get("finding"):
            # Any radiologist's current review: with two who split, the study is found under both.
            queryset = queryset.filter(Exists(Review.objects.filter(study=OuterRef("pk"), correct_label=finding)))
        if data.get("reviewed") == "yes":
            queryset = queryset.filter(Exists(Review.objects.filter(study=OuterRef("pk"))))
        elif data.get("reviewed") == "no":
            queryset = queryset.exclude(Exists(Review.objects.filter(study=OuterRef("pk"))))
        return within_days(queryset, data.get("date_from"), data.get("date_to"))

    def public_params(self) -> dict[str, str]:
        """The PHI-free filters, for pagination links."""
        if not self.is_valid():
            return {}
        return {
            name: str(self.cleaned_data[name])
            for name in self.PUBLIC_FIELDS
            if self.cleaned_data.get(name) not in (None, "")
        }

    @property
    def has_search(self) -> bool:
        return self.is_valid() and bool((self.cleaned_data.get("q") or "").strip())


class UploadForm(forms.Form):
    """Optional identifiers typed by the doctor; the files come from request.FILES.
    (The page's hospital is checked by the gate: hospital.tenancy.switched_away.)"""

    patient_id = forms.CharField(label="Patient ID (optional)", required=False, max_length=64)
    accession_number = forms.CharField(label="Accession number (optional)", required=False, max_length=64)


class ReviewForm(forms.Form):
    verdict = forms.ChoiceField(label="Verdict", choices=Review.Verdict.choices, widget=forms.RadioSelect)
    correct_label = forms.ChoiceField(
        label="Correct finding", required=False, choices=[("", "Choose…"), *Label.choices]
    )
    note = forms.CharField(label="Note", required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))

    def __init__(self, *args, model_label: str, **kwargs) -> None:
        # The label of the result on screen: a review is offered and taken only with one
        # (views._result_not_the_one_seen).
        self.model_label = model_label
        super().__init__(*args, **kwargs)

    def clean(self) -> dict:
        cleaned = super().clean()
        verdict, label = cleaned.get("verdict"), cleaned.get("correct_label")
        if verdict == Review.Verdict.AGREE:
            # Saved as the model's finding, another one chosen was dropped without a word (UX review).
            if label and label != self.model_label:
                self.add_error(
                    "correct_label",
                    "That is not the model's finding: choose 'Disagree' to correct it, "
                    "or set no correct finding to agree.",
                )
            cleaned["correct_label"] = self.model_label
        elif verdict == Review.Verdict.DISAGREE:
            if not label:
                self.add_error("correct_label", "Choose the correct finding when you disagree.")
            elif label == self.model_label:
                self.add_error("correct_label", "That is the model's finding; choose 'Agree' instead.")
        return cleaned
