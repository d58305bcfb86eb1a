"""The model performance page: how each model version agrees with radiologists' reviews.

Reviews are turned into a reference label by the same rule as the training export
(`feedback.counted_reviews`, `feedback.label_from_reviews`): a radiologist who left, or is
no longer a radiologist there, labels nothing here either. Every prediction of a reviewed study, the shadow
candidate's included, is compared with it. Platform superusers see every hospital;
radiologists and hospital admins see their active hospital only; doctors get 403.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from diagnostics.feedback import counted_reviews, label_from_reviews
from diagnostics.models import Label, Prediction
from hospital.models import Role
from mlcore.models import ModelVersion

ALLOWED_ROLES = {Role.RADIOLOGIST, Role.HOSPITAL_ADMIN}
# The agreement plot: at most this many most recent weeks, drawn in a CHART_W x CHART_H box.
PLOT_WEEKS = 26
CHART_W, CHART_H, CHART_PAD = 640, 200, 32


@dataclass
class VersionStats:
    version: ModelVersion
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    shadow: bool = False
    weekly: dict[date, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # week -> [agree, n]

    def add(self, predicted: str, reference: str, week: date) -> None:
        positive, truly = predicted == Label.PNEUMONIA, reference == Label.PNEUMONIA
        if positive and truly:
            self.tp += 1
        elif positive:
            self.fp += 1
        elif truly:
            self.fn += 1
        else:
            self.tn += 1
        self.weekly[week][0] += int(predicted == reference)
        self.weekly[week][1] += 1

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def agreement(self) -> float | None:
        return (self.tp + self.tn) / self.total if self.total else None

    @property
    def sensitivity(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def specificity(self) -> float | None:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else None


@dataclass
class ReviewedSet:
    labels: dict[int, str]  # study id -> reference label
    reviewed_week: dict[int, date]
    conflicts: int
    reviews: int
    # The reviewed studies, as a subquery: as a list of their ids, each of the page's
    # prediction queries sent 30,000 literals (265 ms each; scale review).
    studies: QuerySet

    def predictions(self) -> QuerySet[Prediction]:
        return Prediction.objects.filter(study_id__in=self.studies)


def scope_hospitals(request: HttpRequest):
    """None for every hospital (platform superusers), else the active hospital; raises 403/404."""
    if request.user.is_superuser:
        return None
    if getattr(request, "membership", None) is None:
        raise Http404("No hospital.")
    if request.membership.role not in ALLOWED_ROLES:
        raise PermissionDenied("Model performance is for radiologists and hospital admins.")
    return [request.hospital]


def reviewed_set(hospitals) -> ReviewedSet:
    reviews = counted_reviews()
    if hospitals is not None:
        reviews = reviews.filter(study__hospital__in=hospitals)
    by_study: dict[int, list[str]] = defaultdict(list)
    last: dict[int, date] = {}
    count = 0
    for study_id, label, updated in reviews.values_list("study_id", "correct_label", "updated_at"):
        count += 1
        by_study[study_id].append(label)
        day = updated.date()
        last[study_id] = max(last.get(study_id, day), day)
    labels, conflicts = {}, 0
    for study_id, study_labels in by_study.items():
        label = label_from_reviews(study_labels)
        if label is None:
            conflicts += 1
        else:
            labels[study_id] = label
    weeks = {study_id: day - timedelta(days=day.weekday()) for study_id, day in last.items()}
    return ReviewedSet(
        labels=labels, reviewed_week=weeks, conflicts=conflicts, reviews=count, studies=reviews.values("study_id")
    )


def version_stats(reviewed: ReviewedSet) -> dict[int, VersionStats]:
    """One entry per model version that predicted a reviewed study, shadow or not."""
    predictions = reviewed.predictions().values_list("study_id", "model_version_id", "label")
    # Studies whose reviewers split evenly have no reference label: left out.
    rows = [row for row in predictions if row[0] in reviewed.labels]
    versions = ModelVersion.objects.in_bulk({row[1] for row in rows})
    stats: dict[int, VersionStats] = {}
    for study_id, version_id, label in rows:
        entry = stats.setdefault(version_id, VersionStats(version=versions[version_id]))
        # Flagged while it is the shadow candidate; once promoted, its earlier shadow
        # predictions stay is_shadow, but it is the active version.
        entry.shadow = entry.version.shadow
        entry.add(label, reviewed.labels[study_id], reviewed.reviewed_week[study_id])
    return stats


def shadow_comparison(reviewed: ReviewedSet, active: ModelVersion | None) -> list[dict]:
    """Each shadow candidate against the active model on the same reviewed studies."""
    if active is None:
        return []
    rows = reviewed.predictions().filter(Q(model_version=active, is_shadow=False) | Q(is_shadow=True))
    by_version: dict[int, dict[int, str]] = defaultdict(dict)
    for study_id, version_id, label in rows.values_list("study_id", "model_version_id", "label"):
        if study_id in reviewed.labels:  # not one whose reviewers split evenly
            by_version[version_id][study_id] = label
    active_labels = by_version.pop(active.pk, {})
    candidates = ModelVersion.objects.in_bulk(list(by_version))
    result = []
    for version_id, labels in by_version.items():
        common = sorted(set(labels) & set(active_labels))
        candidate_stats, active_stats = VersionStats(candidates[version_id]), VersionStats(active)
        for study_id in common:
            week = reviewed.reviewed_week[study_id]
            candidate_stats.add(labels[study_id], reviewed.labels[study_id], week)
            active_stats.add(active_labels[study_id], reviewed.labels[study_id], week)
        result.append({"candidate": candidate_stats, "active": active_stats, "studies": len(common)})
    return result


def agreement_chart(stats: list[VersionStats]) -> dict:
    """Weekly agreement rates as SVG polylines (server-rendered, no JavaScript)."""
    weeks = sorted({week for entry in stats for week in entry.weekly})[-PLOT_WEEKS:]
    if not weeks:
        return {"series": [], "weeks": []}
    step = (CHART_W - 2 * CHART_PAD) / max(1, len(weeks) - 1)
    series = []
    for index, entry in enumerate(stats):
        points = []
        for i, week in enumerate(weeks):
            agree, total = entry.weekly.get(week, (0, 0))
            if total:
                x = CHART_PAD + i * step
                y = CHART_PAD + (1 - agree / total) * (CHART_H - 2 * CHART_PAD)
                points.append({"x": round(x, 1), "y": round(y, 1), "rate": agree / total, "n": total, "week": week})
        series.append(
            {
                "name": entry.version.name,
                "shadow": entry.shadow,
                "colour": index % 4,
                "points": points,
                "polyline": " ".join(f"{p['x']},{p['y']}" for p in points),
            }
        )
    return {
        "series": series,
        "weeks": weeks,
        "first": weeks[0],
        "last": weeks[-1],
        "width": CHART_W,
        "height": CHART_H,
        "pad": CHART_PAD,
        "grid": [
            {"y": CHART_PAD + f * (CHART_H - 2 * CHART_PAD), "label": f"{int((1 - f) * 100)}%"} for f in (0, 0.5, 1)
        ],
    }


def gate_comparisons() -> list[ModelVersion]:
    """Candidates whose retraining compared them with their parent on the locked validation set."""
    candidates = ModelVersion.objects.filter(status=ModelVersion.Status.CANDIDATE).select_related("parent")
    return [version for version in candidates if version.metrics.get("comparison")]


@never_cache
@require_GET
def performance(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    hospitals = scope_hospitals(request)
    reviewed = reviewed_set(hospitals)
    stats = sorted(version_stats(reviewed).values(), key=lambda s: (s.shadow, s.version.created_at), reverse=True)
    active = ModelVersion.objects.active()
    context = {
        "scope": "All hospitals" if hospitals is None else hospitals[0].name,
        "all_hospitals": hospitals is None,
        "reviewed": reviewed,
        "labelled_studies": len(reviewed.labels),
        "stats": stats,
        "active": active,
        "chart": agreement_chart(stats),
        "shadow": shadow_comparison(reviewed, active),
        "gate": gate_comparisons(),
    }
    return render(request, "diagnostics/performance.html", context)
