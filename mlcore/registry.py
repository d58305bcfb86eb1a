"""The Django side of mlcore: registering, promoting and serving model versions."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from hospital import audit
from mlcore.models import ModelVersion

# torch is imported where an engine is built, not here: web processes use the registry
# (admin, health, the API) and never run the network.
if TYPE_CHECKING:
    from mlcore.engine import InferenceEngine, ModelSpec

log = logging.getLogger(__name__)

MODEL_DESCRIPTION = "model.json"


class RegistryError(Exception):
    """A registry operation that cannot be done, with a message for the operator."""


def resolve_weights_path(version: ModelVersion) -> Path:
    path = Path(version.weights_path)
    return path if path.is_absolute() else Path(settings.MODEL_WEIGHTS_DIR) / path


def spec_for(version: ModelVersion) -> ModelSpec:
    from mlcore.engine import ModelSpec

    return ModelSpec(
        name=version.name,
        architecture=version.architecture,
        image_size=version.image_size,
        weights_path=resolve_weights_path(version),
        weights_sha256=version.weights_sha256,
        threshold=version.threshold,
        temperature=version.temperature,
        logit_bias=version.logit_bias,
    )


def _relative_to_weights_dir(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(settings.MODEL_WEIGHTS_DIR).resolve()))
    except ValueError:
        return str(path.resolve())


@transaction.atomic  # the version and its event, or neither
def register_from_dir(
    model_dir: Path, *, name: str | None = None, parent: ModelVersion | None = None, actor=None
) -> ModelVersion:
    """Register the output of `train_model` as a candidate, checking the weights' hash."""
    description_path = Path(model_dir) / MODEL_DESCRIPTION
    if not description_path.is_file():
        raise RegistryError(f"{description_path} not found: is {model_dir} the output of train_model?")
    description = json.loads(description_path.read_text())
    weights = Path(model_dir) / description["weights"]
    if not weights.is_file():
        raise RegistryError(f"weights file {weights} is missing")
    from mlcore.network import file_sha256

    if file_sha256(weights) != description["weights_sha256"]:
        raise RegistryError(f"{weights} does not match the sha256 recorded in {description_path}")
    card_path = Path(model_dir) / "model_card.json"
    # Figures only: a comparison with the active version is what Pleura measures after
    # registration (`compare_model NAME`), never a file beside the weights, which anyone
    # able to write the folder could edit (ML review).
    metrics = description["validation_metrics"]
    name = name or description["name"]
    if ModelVersion.objects.filter(name=name).exists():
        raise RegistryError(f"a model version named {name!r} already exists")
    version = ModelVersion.objects.create(
        name=name,
        architecture=description["architecture"],
        image_size=description["image_size"],
        weights_path=_relative_to_weights_dir(weights),
        weights_sha256=description["weights_sha256"],
        threshold=description["threshold"],
        temperature=description["temperature"],
        logit_bias=description.get("logit_bias", 0.0),
        metrics=metrics,
        training_data=description["training_data"],
        card=json.loads(card_path.read_text()) if card_path.is_file() else {},
        parent=parent,
    )
    audit.record(audit.Action.MODEL_REGISTERED, actor=actor, target=version, name=version.name)
    return version


class PromotionRefused(RegistryError):
    """The promotion gate's reasons to refuse a candidate, judged under the promotion lock."""

    def __init__(self, failures: list[str]):
        super().__init__("; ".join(failures))
        self.failures = failures


@transaction.atomic
def activate(
    version: ModelVersion,
    *,
    actor=None,
    action: str = audit.Action.MODEL_PROMOTED,
    gated: bool = False,
    override: bool = False,
    from_status: str | None = None,
    **detail,
) -> ModelVersion:
    """Make `version` the one active model; the previous active one is retired.

    `gated`: the candidate must pass the promotion gate against the version active at
    this moment, or PromotionRefused is raised (`override` promotes anyway, recording
    the failures). `from_status`: the status `version` must still have (a rollback
    re-activates only a retired version).

    Every version row is locked first, in one order, so promotions run one after the
    other: checked before the lock, two candidates both compared with version X were
    both promoted, the second over the first without ever being compared with it.
    """
    list(ModelVersion.objects.select_for_update().order_by("pk").values_list("pk", flat=True))
    version = ModelVersion.objects.get(pk=version.pk)
    if version.status == ModelVersion.Status.ACTIVE:
        raise RegistryError(f"{version.name} is already the active version")
    if from_status is not None and version.status != from_status:
        raise RegistryError(f"{version.name} is {version.get_status_display().lower()} now, not {from_status}")
    weights = resolve_weights_path(version)
    if not weights.is_file():
        raise RegistryError(f"weights for {version.name} are missing at {weights}")
    from mlcore.network import file_sha256

    # Changed since it was registered, the file would be refused by every worker's engine
    # (its hash is checked on load), and the studies would wait with no model (worker review).
    if file_sha256(weights) != version.weights_sha256:
        raise RegistryError(f"weights for {version.name} at {weights} do not match the sha256 it was registered with")
    previous = ModelVersion.objects.active()
    if gated:
        from mlcore.promotion import gate_failures

        failures = gate_failures(version, previous)
        if failures and not override:
            raise PromotionRefused(failures)
        detail.update(override=bool(failures), gate_failures=failures)
    if previous is not None:
        ModelVersion.objects.filter(pk=previous.pk, status=ModelVersion.Status.ACTIVE).update(
            status=ModelVersion.Status.RETIRED, shadow=False
        )
    ModelVersion.objects.filter(pk=version.pk).update(
        status=ModelVersion.Status.ACTIVE, promoted_at=timezone.now(), shadow=False
    )
    version.refresh_from_db()
    record_for_its_hospitals(
        action, version, actor=actor, name=version.name, previous=previous.name if previous else None, **detail
    )
    return version


def record_for_its_hospitals(action: str, version: ModelVersion, *, actor=None, **detail) -> None:
    """The platform's event about `version`, and the same in the trail of each hospital
    whose reviews it was fine-tuned on (its lineage's `review_hospitals`): their admins gave
    the consent, and saw the export in their trail but never what was built from it, nor
    that it reached their doctors (learning-loop review)."""
    from hospital.models import Hospital

    lineage = (version.training_data or {}).get("lineage") or {}
    trained_on = [slug for slug, counts in (lineage.get("review_hospitals") or {}).items() if counts.get("train")]
    hospitals = Hospital.objects.filter(slug__in=trained_on).order_by("pk") if trained_on else []
    audit.record_all(
        [audit.build(action, actor=actor, target=version, **detail)]
        + [audit.build(action, actor=actor, hospital=hospital, target=version, **detail) for hospital in hospitals]
    )


class _EngineCache:
    """One engine per process, for the version that is active now; reloaded on promotion."""

    def __init__(self):
        self._lock = threading.Lock()
        self._engines: dict[tuple[int, str], InferenceEngine] = {}

    def get(self, version: ModelVersion, device: str | None = None) -> InferenceEngine:
        key = (version.pk, version.weights_sha256)
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                from mlcore.engine import InferenceEngine
                from mlcore.network import WeightsMismatchError

                try:
                    engine = InferenceEngine(spec_for(version), device=device)
                except WeightsMismatchError as exc:
                    raise RegistryError(str(exc)) from exc
                log.info("loaded model %s on %s", version.name, engine.device)
                # Keep the engines of at most two versions (active + shadow candidate).
                while len(self._engines) >= 2:
                    self._engines.pop(next(iter(self._engines)))
                self._engines[key] = engine
            return engine

    def clear(self) -> None:
        with self._lock:
            self._engines.clear()


engines = _EngineCache()


NO_ACTIVE_VERSION = "no active model version: run `manage.py ensure_default_model` or `promote_model`"


def get_active_engine(device: str | None = None) -> tuple[ModelVersion, InferenceEngine]:
    version = ModelVersion.objects.active()
    if version is None:
        raise RegistryError(NO_ACTIVE_VERSION)
    return version, engines.get(version, device)


def get_serving_engine(device: str | None = None) -> tuple[ModelVersion, InferenceEngine, ModelVersion | None]:
    """The active version and its engine, and the shadow candidate (if any) to run beside it."""
    version, shadow = ModelVersion.objects.serving()
    if version is None:
        raise RegistryError(NO_ACTIVE_VERSION)
    return version, engines.get(version, device), shadow


def get_engine(version: ModelVersion, device: str | None = None) -> InferenceEngine:
    return engines.get(version, device)
