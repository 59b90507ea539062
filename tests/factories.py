"""factory_boy factories for every model. Rows with invariants (object permissions,
audit events, signatures, one prediction per job) are made through the services, the
way the product makes them, so a test never holds a row the product could not have."""

from __future__ import annotations

from typing import Any

import factory
from django.conf import settings
from django.contrib.auth.models import Group

from accounts import services as account_services
from accounts.models import ApiToken, CareUnit, User
from accounts.roles import ensure_role_groups
from diagnostics.intake import storage
from diagnostics.models import (
    BlindedRead,
    Case,
    InferenceJob,
    ModelVersion,
    Notification,
    Prediction,
    ReviewDecision,
    ReviewerPreference,
    ReviewItem,
    Scan,
)
from diagnostics.services.cases import IncomingFile, case_create, scans_upload
from diagnostics.services.jobs import JobOutcome, predictions_store
from diagnostics.services.model_registry import model_register
from diagnostics.services.notifications import notify
from diagnostics.services.reviews import blinded_read_record, review_sign, reviewer_preference_set
from tests.helpers import PASSWORD, image_bytes


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def role(self, create: bool, extracted: str | None, **kwargs: object) -> None:
        if extracted:
            ensure_role_groups()
            self.groups.add(Group.objects.get(name=extracted))
            if extracted == "admin":
                self.is_staff = True
        self.save()

    @factory.post_generation
    def units(self, create: bool, extracted: list[CareUnit] | None, **kwargs: object) -> None:
        for unit in extracted or []:
            account_services.unit_member_add(acting_user=None, unit=unit, user=self)


class CareUnitFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CareUnit

    name = factory.Sequence(lambda n: f"Unit {n}")

    @classmethod
    def _create(cls, model_class: type[CareUnit], *args: Any, **kwargs: Any) -> CareUnit:
        """Through the service: the unit gets its group and its audit event."""
        return account_services.unit_create(acting_user=None, name=kwargs["name"])


class ModelVersionFactory(factory.django.DjangoModelFactory):
    """A registered bundle (by default the bundled lymph-node model, active)."""

    class Meta:
        model = ModelVersion

    bundle_dir = factory.LazyFunction(lambda: settings.MODEL_DIR / "demo-pcam")
    activate = True

    @classmethod
    def _create(cls, model_class: type[ModelVersion], *args: Any, **kwargs: Any) -> ModelVersion:
        return model_register(acting_user=None, bundle_dir=kwargs["bundle_dir"], activate=kwargs["activate"])


def _clinician_in_new_unit() -> User:
    unit = CareUnitFactory()
    return UserFactory(role="clinician", units=[unit])


class CaseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Case

    patient_ref = factory.Sequence(lambda n: f"PSN-{n:05d}")
    body_site = "lymph node"
    note = ""
    created_by = factory.LazyFunction(_clinician_in_new_unit)

    @classmethod
    def _create(cls, model_class: type[Case], *args: Any, **kwargs: Any) -> Case:
        """Through the service, so the case gets its unit and object permissions."""
        return case_create(acting_user=kwargs.pop("created_by"), **kwargs)


class ScanFactory(factory.django.DjangoModelFactory):
    """An uploaded image (with its queued inference job), through the upload service."""

    class Meta:
        model = Scan

    case = factory.SubFactory(CaseFactory)
    name = factory.Sequence(lambda n: f"scan-{n}.png")
    data = factory.Sequence(lambda n: image_bytes(color=(n % 256, (n * 7) % 256, 120)))

    @classmethod
    def _create(cls, model_class: type[Scan], *args: Any, **kwargs: Any) -> Scan:
        case: Case = kwargs["case"]
        result = scans_upload(
            acting_user=case.created_by, case=case, files=[IncomingFile(name=kwargs["name"], data=kwargs["data"])]
        )
        return (result.created or result.repeated)[0]


class InferenceJobFactory(factory.django.DjangoModelFactory):
    """The job an upload queues; ``status`` moves it on as a worker's claim would."""

    class Meta:
        model = InferenceJob

    scan = factory.SubFactory(ScanFactory)
    status = InferenceJob.Status.QUEUED

    @classmethod
    def _create(cls, model_class: type[InferenceJob], *args: Any, **kwargs: Any) -> InferenceJob:
        job: InferenceJob = kwargs["scan"].job
        if kwargs["status"] != job.status:
            InferenceJob.objects.filter(pk=job.pk).update(status=kwargs["status"], attempts=1)
            job.refresh_from_db()
        return job


class PredictionFactory(factory.django.DjangoModelFactory):
    """A prediction stored the way the worker stores it (and its pending review item),
    without running the network."""

    class Meta:
        model = Prediction

    job = factory.SubFactory(InferenceJobFactory, status=InferenceJob.Status.RUNNING)
    model_version = factory.SubFactory(ModelVersionFactory)
    probabilities = (0.3, 0.7)
    heatmap_png: bytes | None = None
    # Set: the input was outside what the model was trained on (diagnostics/ml/ood.py codes).
    ood_reasons: tuple[str, ...] = ()
    ood_score: float | None = None

    @classmethod
    def _create(cls, model_class: type[Prediction], *args: Any, **kwargs: Any) -> Prediction:
        job: InferenceJob = kwargs["job"]
        if job.status != InferenceJob.Status.RUNNING:
            InferenceJob.objects.filter(pk=job.pk).update(status=InferenceJob.Status.RUNNING, attempts=1)
        outcome = JobOutcome(
            job_id=job.id,
            probabilities=[float(p) for p in kwargs["probabilities"]],
            heatmap_png=kwargs["heatmap_png"],
            ood_score=kwargs.get("ood_score"),
            ood_reasons=tuple(kwargs.get("ood_reasons") or ()),
        )
        stored = predictions_store(model_version=kwargs["model_version"], outcomes=[outcome], inference_ms=1.0)
        assert stored, "the job already had a prediction"
        return stored[0]


class ReviewItemFactory(factory.django.DjangoModelFactory):
    """The pending review item a stored prediction puts in the queue."""

    class Meta:
        model = ReviewItem

    prediction = factory.SubFactory(PredictionFactory)

    @classmethod
    def _create(cls, model_class: type[ReviewItem], *args: Any, **kwargs: Any) -> ReviewItem:
        return ReviewItem.objects.get(prediction=kwargs["prediction"])


class ReviewDecisionFactory(factory.django.DjangoModelFactory):
    """A signed decision, signed through the service with the physician's password."""

    class Meta:
        model = ReviewDecision

    review_item = factory.SubFactory(ReviewItemFactory)
    physician: User | None = None  # a physician of the case's unit, made when not given
    outcome = ReviewDecision.Outcome.CONFIRMED
    stage = ""
    reason = ""
    supersedes: ReviewDecision | None = None

    @classmethod
    def _create(cls, model_class: type[ReviewDecision], *args: Any, **kwargs: Any) -> ReviewDecision:
        item: ReviewItem = kwargs["review_item"]
        physician = kwargs["physician"] or UserFactory(role="physician", units=[item.prediction.scan.case.unit])
        return review_sign(
            signing_session=None,
            acting_user=physician,
            review_item=item,
            outcome=kwargs["outcome"],
            stage=kwargs["stage"],
            reason=kwargs["reason"],
            password=PASSWORD,
            supersedes=kwargs["supersedes"],
        )


class BlindedReadFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BlindedRead

    review_item = factory.SubFactory(ReviewItemFactory)
    physician = factory.LazyAttribute(
        lambda o: UserFactory(role="physician", units=[o.review_item.prediction.scan.case.unit])
    )
    stage = factory.LazyAttribute(lambda o: o.review_item.prediction.labels[0])

    @classmethod
    def _create(cls, model_class: type[BlindedRead], *args: Any, **kwargs: Any) -> BlindedRead:
        return blinded_read_record(
            acting_user=kwargs["physician"], review_item=kwargs["review_item"], stage=kwargs["stage"]
        )


class ReviewerPreferenceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ReviewerPreference

    user = factory.LazyFunction(lambda: UserFactory(role="physician"))
    blinded_first = True

    @classmethod
    def _create(cls, model_class: type[ReviewerPreference], *args: Any, **kwargs: Any) -> ReviewerPreference:
        return reviewer_preference_set(acting_user=kwargs["user"], blinded_first=kwargs["blinded_first"])


class NotificationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Notification

    user = factory.SubFactory(UserFactory)
    kind = Notification.Kind.CASE_SIGNED
    message = "Case PSN-1: a physician signed a result."
    link = "/"
    review_item: ReviewItem | None = None

    @classmethod
    def _create(cls, model_class: type[Notification], *args: Any, **kwargs: Any) -> Notification:
        return notify(**kwargs)


class ApiTokenFactory(factory.django.DjangoModelFactory):
    """A token minted by its own user. The secret is on ``token.key`` (shown once)."""

    class Meta:
        model = ApiToken

    user = factory.SubFactory(UserFactory)
    name = "test"

    @classmethod
    def _create(cls, model_class: type[ApiToken], *args: Any, **kwargs: Any) -> ApiToken:
        token, key = account_services.api_token_create(
            acting_user=kwargs["user"], user=kwargs["user"], name=kwargs["name"]
        )
        token.key = key  # type: ignore[attr-defined]  # the one-time secret, for the test's client
        return token


# --- shorthands the tests use most ---------------------------------------------------


def make_scan(
    user: User,
    *,
    color: tuple[int, int, int] = (200, 80, 120),
    ref: str = "PSN-1",
    data: bytes | None = None,
    name: str = "a.png",
) -> Scan:
    """A new case of ``user`` with one uploaded image (a flat test colour, or ``data``)."""
    case = CaseFactory(created_by=user, patient_ref=ref)
    return ScanFactory(case=case, name=name, data=data if data is not None else image_bytes(color=color))


def make_prediction(
    user: User, model: ModelVersion, probabilities: list[float], *, ood_reasons: tuple[str, ...] = (), **kwargs: Any
) -> Prediction:
    """A prediction on a new case of ``user``, as the worker would store it."""
    scan = make_scan(user, **kwargs)
    return PredictionFactory(job=scan.job, model_version=model, probabilities=probabilities, ood_reasons=ood_reasons)


def store_heatmap(prediction: Prediction, png: bytes) -> None:
    """Attach a heat map to a prediction the way the worker does: through storage
    (content-addressed, encrypted at rest) and the prediction's field."""
    name, _ = storage.store_bytes(data=png, sha256=storage.sha256_bytes(png))
    Prediction.objects.filter(pk=prediction.pk).update(heatmap_storage_name=name)


def make_case(user: User, *, ref: str = "PSN-1", n_files: int = 1, seed: int = 0) -> Case:
    """A case of ``user`` created with ``n_files`` distinct images in one upload."""
    files = [
        IncomingFile(name=f"s{i}.png", data=image_bytes(color=(seed % 256, (i * 40) % 256, 120)))
        for i in range(n_files)
    ]
    return case_create(acting_user=user, patient_ref=ref, body_site="lymph node", files=files or None)
