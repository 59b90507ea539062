"""Hospital integration: studies in from the PACS (STOW-RS, C-STORE, QIDO/WADO pull),
signed results out (DICOM SR + heat map by STOW-RS; FHIR through the API).

Every received instance takes the upload path of a person (`scans_upload`: the same
validation, de-identification, encryption and audit) under the integration account's
service user, so no rule is written twice. What the PACS needs to file a result back
(original UIDs, accession number, patient and study attributes) is kept only in the
encrypted link table, which only this module reads.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import re
import secrets
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

import numpy as np
from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from PIL import Image

from accounts import services as account_services
from accounts.audit import audit_record, record_view
from accounts.models import CareUnit, User
from accounts.roles import Role, ensure_role_groups
from cancerweb.celery import app as celery_app
from core.exceptions import ApplicationError
from diagnostics.intake import encryption, storage
from diagnostics.intake.validation import UploadRejected, validate_image
from diagnostics.interop import dicomweb, results
from diagnostics.models import (
    Case,
    Exchange,
    InstanceLink,
    IntegrationAccount,
    ReviewDecision,
    Scan,
    StudyLink,
)
from diagnostics.selectors.integration import signed_decision_get
from diagnostics.services.cases import IncomingFile, UploadBatchRejected, case_create, scans_upload

logger = logging.getLogger(__name__)
# dicomweb-client logs the study and instance UIDs it searches and retrieves at INFO;
# nothing that identifies a study reaches the logs.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)

SEND_RESULT_TASK = "diagnostics.send_result"
TOKEN_PREFIX = "cwi_"  # noqa: S105  (a prefix to recognise the token, not a secret)
AE_TITLE = re.compile(r"^[ -~]{1,16}$")  # PS3.5: up to 16 characters, no backslash or control characters


class IntegrationError(ApplicationError):
    """A refused integration request: ``code`` for the sender, ``message`` for people."""


# Admins run the integration (its exchanges are an operations log, no clinical data):
# the role that reads the audit trail, on the staff side.
OPERATIONS_PERMISSION = "accounts.view_auditevent"


def may_operate_integration(user: User) -> bool:
    return bool(user.is_active and user.is_staff and user.has_perm(OPERATIONS_PERMISSION))


# --- accounts ----------------------------------------------------------------------


def integration_account_create(
    *,
    acting_user: User | None,
    name: str,
    unit: CareUnit,
    task: str,
    ae_titles: list[str] | None = None,
    dicomweb_url: str = "",
    pull_enabled: bool = False,
    pull_modalities: str = "",
    pull_study_description: str = "",
    body_site: str = "PACS study",
    client_address: str | None = None,
) -> tuple[IntegrationAccount, str]:
    """An integration account with its service user (clinician role, member of
    ``unit`` only); returns the account and its bearer token, shown once."""
    if acting_user is not None and not (
        may_operate_integration(acting_user) and acting_user.has_perm("accounts.add_user")
    ):
        raise PermissionDenied("only admins create integration accounts")
    titles = [t.strip() for t in (ae_titles or []) if t.strip()]
    for title in titles:
        if not AE_TITLE.match(title) or "\\" in title:
            raise ValidationError({"ae_titles": f"not a DICOM AE title: {title!r} (1-16 printable characters)"})
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:100] or "system"
    with transaction.atomic():
        ensure_role_groups()
        user = User(username=f"integration-{slug}", first_name=name[:150], last_name="(integration)")
        user.set_unusable_password()  # it never logs in: it acts by its token only
        user.full_clean()
        user.save()
        user.groups.add(Group.objects.get(name=Role.CLINICIAN.value))
        account_services.unit_member_add(acting_user=acting_user, unit=unit, user=user)
        account = IntegrationAccount(
            name=name.strip(),
            user=user,
            unit=unit,
            task=task.strip(),
            body_site=body_site.strip() or "PACS study",
            token_hash=account_services.hash_token_key(token),
            token_prefix=token[:10],
            ae_titles=titles,
            dicomweb_url=dicomweb_url.strip().rstrip("/"),
            pull_enabled=pull_enabled,
            pull_modalities=pull_modalities.strip(),
            pull_study_description=pull_study_description.strip(),
        )
        account.full_clean()
        account.save()
        audit_record(
            actor=acting_user,
            action="integration.account_create",
            obj=account,
            data={"name": account.name, "unit": str(unit.uuid), "task": account.task, "ae_titles": titles},
            client_address=client_address,
        )
    return account, token


def integration_authenticate(*, token: str) -> IntegrationAccount | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    account = (
        IntegrationAccount.objects.select_related("user", "unit")
        .filter(token_hash=account_services.hash_token_key(token), active=True, user__is_active=True)
        .first()
    )
    return account


def integration_account_for_ae_title(*, ae_title: str) -> IntegrationAccount | None:
    title = ae_title.strip()
    for account in IntegrationAccount.objects.filter(active=True, user__is_active=True).select_related("user", "unit"):
        if title in account.ae_titles:
            return account
    return None


def allowed_ae_titles() -> list[str]:
    titles: list[str] = []
    for account in IntegrationAccount.objects.filter(active=True, user__is_active=True):
        titles.extend(account.ae_titles)
    return sorted(set(titles))


# --- keyed pseudonyms and the encrypted link table ---------------------------------


def _key(purpose: str) -> bytes:
    # Derived from the installation's secret: stable across restarts, so a study seen
    # again finds its case and a patient keeps one pseudonym, but not reversible.
    return hmac.new(settings.SECRET_KEY.encode(), f"cancerweb-integration:{purpose}".encode(), "sha256").digest()


def patient_pseudonym(*, account: IntegrationAccount, ids: dicomweb.OriginalIdentifiers) -> str:
    """The case's patient reference: a keyed hash of the issuer and Patient ID (of the
    study UID when the instance has no Patient ID), never the name or the ID."""
    patient_id = ids.patient.get("PatientID", "")
    source = f"{ids.patient.get('IssuerOfPatientID', '')}|{patient_id}" if patient_id else f"study|{ids.study_uid}"
    digest = hmac.new(_key("patient"), f"{account.unit_id}|{source}".encode(), hashlib.sha256).hexdigest()
    return f"PX-{digest[:24].upper()}"  # inside the default CANCERWEB_PSEUDONYM_PATTERN


def _study_key(account: IntegrationAccount, study_uid: str) -> str:
    return hmac.new(_key("study"), f"{account.unit_id}|{study_uid}".encode(), hashlib.sha256).hexdigest()


def _seal(value: dict[str, Any], *, name: str) -> bytes:
    return encryption.encrypt(json.dumps(value, sort_keys=True).encode(), keyring=storage.keyring(), name=name)


def _open(blob: bytes | memoryview, *, name: str) -> dict[str, Any]:
    return dict(json.loads(encryption.decrypt(bytes(blob), keyring=storage.keyring(), name=name)))


def _study_blob_name(link: StudyLink) -> str:
    return f"study-link:{link.study_key}"


def _instance_blob_name(scan: Scan) -> str:
    return f"instance-link:{scan.uuid}"


def study_identifiers(link: StudyLink) -> dict[str, Any]:
    return _open(link.identifiers, name=_study_blob_name(link))


def instance_identifiers(link: InstanceLink) -> dict[str, Any]:
    return _open(link.identifiers, name=_instance_blob_name(link.scan))


# --- studies in -----------------------------------------------------------------------


@dataclass
class InstanceOutcome:
    sop_class_uid: str
    sop_instance_uid: str
    failure_reason: int | None = None
    code: str = ""
    message: str = ""
    case: Case | None = None
    scan: Scan | None = None
    repeated: bool = False

    @property
    def stored(self) -> bool:
        return self.failure_reason is None


def _best_effort_uids(data: bytes) -> tuple[str, str]:
    """SOP class and instance of a refused instance, for the sender's response only."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        return str(ds.get("SOPClassUID", "") or "")[:64], str(ds.get("SOPInstanceUID", "") or "")[:64]
    except Exception:  # a refused file may be anything
        return "", ""


def exchange_refused(
    *,
    account: IntegrationAccount | None,
    channel: str,
    code: str,
    message: str,
    failure_reason: int | None = None,
) -> Exchange:
    """An inbound message refused as a whole or per instance: the reason, never its content."""
    exchange = Exchange(
        direction=Exchange.Direction.INBOUND,
        channel=channel,
        state=Exchange.State.REFUSED,
        reason=f"{code}: {message}"[:2000],
        account=account,
        detail={"code": code, **({"failure_reason": f"0x{failure_reason:04X}"} if failure_reason is not None else {})},
    )
    exchange.full_clean()
    exchange.save()
    return exchange


def instance_receive(
    *, account: IntegrationAccount, data: bytes, channel: str, client_address: str | None = None
) -> InstanceOutcome:
    """One DICOM instance from the hospital: validated and de-identified like an
    upload, filed as a scan of the case of its study (made on first sight). All or
    nothing; a refusal is recorded with its reason and returned, never raised."""
    sop_class, sop_uid = _best_effort_uids(data)

    def refuse(code: str, message: str) -> InstanceOutcome:
        reason = dicomweb.failure_reason(code)
        exchange_refused(account=account, channel=channel, code=code, message=message, failure_reason=reason)
        return InstanceOutcome(sop_class, sop_uid, failure_reason=reason, code=code, message=message)

    try:
        info = validate_image(
            data=data,
            filename="instance.dcm",
            max_bytes=settings.UPLOAD_MAX_BYTES,
            max_pixels=settings.UPLOAD_MAX_PIXELS,
        )
    except UploadRejected as err:
        return refuse(err.code, err.message)
    if info.format != Scan.Format.DICOM:
        return refuse("unsupported_type", "the part is not a DICOM PS3.10 instance")
    ids = dicomweb.original_identifiers(data)
    if not (ids.study_uid and ids.sop_instance_uid and ids.sop_class_uid):
        return refuse("corrupt_image", "the instance has no Study Instance, SOP Instance or SOP Class UID")
    try:
        with transaction.atomic():
            # One case per study even when two instances of a new study arrive at once.
            IntegrationAccount.objects.select_for_update().get(pk=account.pk)
            link = StudyLink.objects.select_related("case").filter(study_key=_study_key(account, ids.study_uid)).first()
            if link is None:
                case = case_create(
                    acting_user=account.user,
                    patient_ref=patient_pseudonym(account=account, ids=ids),
                    body_site=account.body_site,
                    task=account.task or None,
                    unit=account.unit,
                    note="Received from the hospital PACS",
                    client_address=client_address,
                )
                link = StudyLink(account=account, case=case, study_key=_study_key(account, ids.study_uid))
                link.identifiers = _seal(
                    {
                        "study_uid": ids.study_uid,
                        "accession_number": ids.accession_number,
                        "patient": ids.patient,
                        "study": ids.study,
                    },
                    name=_study_blob_name(link),
                )
                link.full_clean()
                link.save()
            result = scans_upload(
                acting_user=account.user,
                case=link.case,
                files=[
                    IncomingFile(
                        name=f"{hashlib.sha256(ids.sop_instance_uid.encode()).hexdigest()[:16]}.dcm", data=data
                    )
                ],
                client_address=client_address,
            )
            scan = (result.created or result.repeated)[0]
            if result.created:
                instance = InstanceLink(study=link, scan=scan)
                instance.identifiers = _seal(
                    {
                        "series_uid": ids.series_uid,
                        "sop_instance_uid": ids.sop_instance_uid,
                        "sop_class_uid": ids.sop_class_uid,
                    },
                    name=_instance_blob_name(scan),
                )
                instance.full_clean()
                instance.save()
            exchange = Exchange(
                direction=Exchange.Direction.INBOUND,
                channel=channel,
                state=Exchange.State.RECEIVED,
                account=account,
                case=link.case,
                detail={"scan": str(scan.uuid), "repeated": not result.created},
            )
            exchange.full_clean()
            exchange.save()
    except UploadBatchRejected as err:
        _, first = err.errors[0]
        return refuse(first.code, first.message)
    except ValidationError as err:
        return refuse("processing_failure", "; ".join(err.messages))
    except PermissionDenied as err:
        return refuse("not_authorized", str(err))
    except storage.StorageUnavailable:
        return refuse("storage_unavailable", "the image store is unavailable; send the instance again later")
    return InstanceOutcome(
        ids.sop_class_uid, ids.sop_instance_uid, case=link.case, scan=scan, repeated=not result.created
    )


# --- pull: QIDO-RS search, WADO-RS retrieve ---------------------------------------


@dataclass
class PullReport:
    studies_seen: int = 0
    studies_retrieved: int = 0
    instances_stored: int = 0
    instances_refused: int = 0
    errors: list[str] = field(default_factory=list)


def _dicomweb_client(url: str) -> Any:
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=url)
    # One attempt per call: retrying with back-off is the outbound exchange's job (it
    # survives restarts); the client's own retries would hold the row lock for minutes.
    client.set_http_retry_params(retry=False)
    client._session.request = _with_timeout(client._session.request)  # type: ignore[method-assign]
    return client


def _with_timeout(request: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", settings.INTEGRATION_HTTP_TIMEOUT_S)
        return request(*args, **kwargs)

    return call


def _qido_studies(client: Any, url: str, filters: dict[str, Any]) -> Any:
    """QIDO-RS study search. The query is built here so that the wildcards * and ? stay
    literal (RFC 3986 allows them in a query): some servers, Orthanc among them, do not
    match a percent-encoded %2A as a wildcard."""
    from urllib.parse import urlencode

    query = urlencode({**filters, "includefield": "NumberOfStudyRelatedInstances"}, safe="*?,")
    response = client._session.get(f"{url}/studies?{query}", headers={"Accept": "application/dicom+json"})
    response.raise_for_status()
    if response.status_code == 204 or not response.content:
        return []
    return response.json()  # ValueError when the answer is not JSON


def _qido_value(study: dict[str, Any], tag: str) -> Any:
    values = (study.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def studies_pull(*, account: IntegrationAccount) -> PullReport:
    """Search the account's PACS for studies matching its filter and retrieve the new
    ones. Idempotent: a study already filed with all its instances is skipped, and an
    instance received twice is recognised (one scan)."""
    report = PullReport()
    if not account.dicomweb_url:
        report.errors.append("the account has no DICOMweb address")
        return report
    client = _dicomweb_client(account.dicomweb_url)
    modalities: list[str | None] = [m.strip().upper() for m in account.pull_modalities.split(",") if m.strip()]
    modalities = modalities or [None]
    found: dict[str, int] = {}
    for modality in modalities:
        filters: dict[str, Any] = {}
        if modality:
            filters["ModalitiesInStudy"] = modality
        if account.pull_study_description:
            filters["StudyDescription"] = account.pull_study_description
        try:
            studies = _qido_studies(client, account.dicomweb_url, filters)
        except ValueError:
            message = "the PACS answered the QIDO-RS search with something that is not DICOM JSON"
            exchange_refused(account=account, channel=Exchange.Channel.PULL, code="qido_not_json", message=message)
            report.errors.append(message)
            return report
        except Exception as exc:  # requests' connection and HTTP errors
            message = f"the QIDO-RS search failed: {type(exc).__name__}"
            exchange_refused(account=account, channel=Exchange.Channel.PULL, code="qido_failed", message=message)
            report.errors.append(message)
            return report
        if not isinstance(studies, list):
            message = "the PACS answered the QIDO-RS search with something that is not DICOM JSON"
            exchange_refused(account=account, channel=Exchange.Channel.PULL, code="qido_not_json", message=message)
            report.errors.append(message)
            return report
        for study in studies:
            uid = _qido_value(study, "0020000D") if isinstance(study, dict) else None
            if isinstance(uid, str) and uid:
                count = _qido_value(study, "00201208")
                found[uid] = int(count) if isinstance(count, (int, float, str)) and str(count).isdigit() else 0
    for uid, count in found.items():
        report.studies_seen += 1
        link = StudyLink.objects.filter(study_key=_study_key(account, uid)).first()
        if link is not None and count and link.instances.count() >= count:
            continue  # seen, nothing new
        report.studies_retrieved += 1
        try:
            datasets = client.retrieve_study(uid)
        except Exception as exc:
            message = f"the WADO-RS retrieve failed: {type(exc).__name__}"
            exchange_refused(account=account, channel=Exchange.Channel.PULL, code="wado_failed", message=message)
            report.errors.append(message)
            continue
        for ds in datasets:
            buffer = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.save_as(buffer, enforce_file_format=True)
            outcome = instance_receive(account=account, data=buffer.getvalue(), channel=Exchange.Channel.PULL)
            if outcome.stored:
                report.instances_stored += 1
            else:
                report.instances_refused += 1
    return report


def studies_pull_all() -> dict[str, PullReport]:
    return {
        account.name: studies_pull(account=account)
        for account in IntegrationAccount.objects.filter(active=True, pull_enabled=True).select_related("user", "unit")
    }


# --- signed results out -------------------------------------------------------------


def result_queue(*, decision: ReviewDecision) -> Exchange | None:
    """Called inside the signing transaction: a signed decision on a case that came
    from a PACS with a DICOMweb address gets an outbound exchange, sent after commit.
    The UIDs of the SR and heat-map objects are fixed now, so every retry sends the
    same objects and the PACS keeps one copy."""
    case = decision.review_item.prediction.scan.case
    link = StudyLink.objects.select_related("account").filter(case=case).first()
    if link is None or not link.account.dicomweb_url or not link.account.active:
        return None
    from pydicom.uid import generate_uid

    exchange = Exchange(
        direction=Exchange.Direction.OUTBOUND,
        channel=Exchange.Channel.SR_STOW,
        state=Exchange.State.PENDING,
        account=link.account,
        case=case,
        decision=decision,
        next_attempt_at=timezone.now(),
        detail={
            "sr_series_uid": generate_uid(),
            "sr_uid": generate_uid(),
            "sc_series_uid": generate_uid(),
            "sc_uid": generate_uid(),
        },
    )
    exchange.full_clean()
    exchange.save()
    exchange_id = exchange.id
    transaction.on_commit(lambda: result_send_enqueue(exchange_id))
    return exchange


def result_send_enqueue(exchange_id: int) -> None:
    """Publish the exchange's id; a broker that is down loses nothing (the sweep sends it)."""
    try:
        celery_app.send_task(SEND_RESULT_TASK, kwargs={"exchange_id": exchange_id}, queue="default")
    except Exception:
        logger.warning("could not enqueue outbound exchange %s; the sweep will", exchange_id, exc_info=True)


def _retry_delay(attempts: int) -> timedelta:
    seconds = min(settings.INTEGRATION_RETRY_BASE_S * 2 ** max(attempts - 1, 0), settings.INTEGRATION_RETRY_MAX_S)
    return timedelta(seconds=seconds)


def _evidence(case: Case) -> tuple[StudyLink, list[results.Evidence], dict[int, results.Evidence]]:
    link = StudyLink.objects.get(case=case)
    study = study_identifiers(link)
    by_scan: dict[int, results.Evidence] = {}
    for instance in link.instances.select_related("scan").order_by("id"):
        ids = instance_identifiers(instance)
        by_scan[instance.scan_id] = results.Evidence(
            study_uid=study["study_uid"],
            series_uid=ids["series_uid"],
            sop_instance_uid=ids["sop_instance_uid"],
            sop_class_uid=ids["sop_class_uid"],
            accession_number=study.get("accession_number", ""),
            patient=study.get("patient", {}),
            study=study.get("study", {}),
        )
    return link, list(by_scan.values()), by_scan


def signed_result(decision: ReviewDecision) -> results.SignedResult:
    prediction = decision.review_item.prediction
    model = prediction.model_version
    from pydicom.uid import generate_uid

    return results.SignedResult(
        stage=decision.stage,
        ai_stage=None if prediction.out_of_distribution else prediction.predicted_label,
        labels=list(prediction.labels),
        probability=float(prediction.confidence),
        model_name=model.name,
        model_version=model.version,
        # A stable UID per model version: the device observer is the same device each time.
        model_uid=generate_uid(entropy_srcs=[str(model.uuid)]),
        signer_name=decision.signer_name,
        signed_at=decision.signed_at,
        meaning=decision.meaning,
        reason=decision.reason,
        organization=prediction.scan.case.unit.name if prediction.scan.case.unit else "",
    )


def _result_objects(exchange: Exchange) -> list[Any]:
    decision = exchange.decision
    assert decision is not None
    scan = decision.review_item.prediction.scan
    _link, evidence, by_scan = _evidence(exchange.case or scan.case)
    if scan.id not in by_scan:
        raise IntegrationError("no_original_instance", "the signed scan has no original instance to refer to")
    previous = []
    older = decision.supersedes
    while older is not None:
        sent = Exchange.objects.filter(decision=older, direction=Exchange.Direction.OUTBOUND).first()
        if sent is not None and sent.state == Exchange.State.SENT:
            previous.append((sent.detail["sr_series_uid"], sent.detail["sr_uid"]))
            break
        older = older.supersedes
    detail = exchange.detail
    sr = results.build_sr(
        evidence=[by_scan[scan.id]],
        result=signed_result(decision),
        series_uid=detail["sr_series_uid"],
        sop_instance_uid=detail["sr_uid"],
        previous=previous,
    )
    objects = [sr]
    prediction = decision.review_item.prediction
    # A flagged input's heat map is withheld everywhere, the PACS included.
    if prediction.heatmap_storage_name and not prediction.out_of_distribution:
        png = storage.read_bytes(prediction.heatmap_storage_name)
        with Image.open(io.BytesIO(png)) as img:
            rgb = np.asarray(img.convert("RGB"))
        objects.append(
            results.build_heatmap(
                evidence=by_scan[scan.id],
                rgb=rgb,
                series_uid=detail["sc_series_uid"],
                sop_instance_uid=detail["sc_uid"],
            )
        )
    return objects


def result_send(*, exchange_id: int) -> Exchange | None:
    """One attempt to store a signed result in the PACS. Claimed under a row lock (a
    duplicate delivery skips it); an exchange not due yet, or already sent, is left
    alone. Each attempt and its outcome are audited with the state change."""
    import requests

    with transaction.atomic():
        exchange = (
            Exchange.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(
                pk=exchange_id,
                direction=Exchange.Direction.OUTBOUND,
                state__in=[Exchange.State.PENDING, Exchange.State.RETRYING],
            )
            .select_related("decision", "account", "case")
            .first()
        )
        if exchange is None:
            return None
        now = timezone.now()
        if exchange.next_attempt_at is not None and exchange.next_attempt_at > now:
            return None
        assert exchange.decision is not None and exchange.account is not None
        exchange.attempts += 1
        outcome: str
        superseded = ReviewDecision.objects.filter(supersedes=exchange.decision).exists()
        try:
            if superseded:
                raise IntegrationError("superseded", "a correction replaced this decision before it was sent")
            objects = _result_objects(exchange)
            _dicomweb_client(exchange.account.dicomweb_url).store_instances(datasets=objects)
        except IntegrationError as err:
            outcome, exchange.state, exchange.reason = "failed", Exchange.State.FAILED, err.message
            exchange.next_attempt_at = None
        except requests.HTTPError as err:
            status = err.response.status_code if err.response is not None else 0
            reason = f"the PACS answered HTTP {status}"
            if 400 <= status < 500 and status not in (408, 429):
                outcome, exchange.state, exchange.reason = "failed", Exchange.State.FAILED, reason
                exchange.next_attempt_at = None
            else:
                outcome = _retry_later(exchange, reason, now)
        except (requests.RequestException, OSError) as err:
            outcome = _retry_later(exchange, f"the PACS is unreachable ({type(err).__name__})", now)
        except storage.StorageUnavailable:
            outcome = _retry_later(exchange, "the image store is unavailable", now)
        else:
            outcome, exchange.state, exchange.reason = "sent", Exchange.State.SENT, ""
            exchange.next_attempt_at = None
            exchange.detail = {**exchange.detail, "objects": len(objects), "sent_at": now.isoformat()}
        exchange.updated_at = now
        exchange.save()
        audit_record(
            actor=None,
            action="integration.result_send",
            obj=exchange,
            data={
                "attempt": exchange.attempts,
                "outcome": outcome,
                "reason": exchange.reason,
                "decision": str(exchange.decision.uuid),
                "sr_uid": exchange.detail.get("sr_uid"),
            },
        )
    return exchange


def _retry_later(exchange: Exchange, reason: str, now: Any) -> str:
    exchange.reason = reason
    if exchange.attempts >= settings.INTEGRATION_SEND_MAX_ATTEMPTS:
        exchange.state = Exchange.State.FAILED
        exchange.next_attempt_at = None
        return "failed"
    exchange.state = Exchange.State.RETRYING
    exchange.next_attempt_at = now + _retry_delay(exchange.attempts)
    return "retrying"


def results_sweep() -> int:
    """Send every outbound exchange that is due (beat runs this): what the broker lost
    or the PACS refused while it was down goes out once it is back."""
    due = list(
        Exchange.objects.filter(
            direction=Exchange.Direction.OUTBOUND,
            state__in=[Exchange.State.PENDING, Exchange.State.RETRYING],
            next_attempt_at__lte=timezone.now(),
        ).values_list("id", flat=True)[:500]
    )
    for exchange_id in due:
        result_send_enqueue(exchange_id)
    return len(due)


def exchange_retry(*, acting_user: User, exchange: Exchange, client_address: str | None = None) -> Exchange:
    """An operator sends a failed or waiting outbound exchange again, now."""
    if not may_operate_integration(acting_user):
        raise PermissionDenied("only admins retry exchanges")
    with transaction.atomic():
        locked = Exchange.objects.select_for_update().get(pk=exchange.pk)
        if locked.direction != Exchange.Direction.OUTBOUND or locked.state == Exchange.State.SENT:
            raise IntegrationError("not_retryable", "only outbound exchanges that were not sent can be retried")
        old = locked.state
        locked.state = Exchange.State.PENDING
        locked.next_attempt_at = timezone.now()
        locked.updated_at = timezone.now()
        locked.save()
        audit_record(
            actor=acting_user,
            action="integration.exchange_retry",
            obj=locked,
            data={"state": {"old": old, "new": locked.state}},
            client_address=client_address,
        )
        exchange_id = locked.id
        transaction.on_commit(lambda: result_send_enqueue(exchange_id))
    return locked


def fhir_diagnostic_report(*, decision: ReviewDecision) -> dict[str, Any]:
    """The FHIR R4 DiagnosticReport of a signed decision (the caller has checked that
    the user may see its case)."""
    case = decision.review_item.prediction.scan.case
    link = StudyLink.objects.filter(case=case).first()
    study = study_identifiers(link) if link is not None else {}
    return results.fhir_report(
        report_id=str(decision.uuid),
        result=signed_result(decision),
        case_ref=case.patient_ref,
        study_uid=study.get("study_uid"),
        accession_number=study.get("accession_number"),
        amended=decision.supersedes_id is not None,
    )


def fhir_report_open(*, acting_user: User, decision_uuid: UUID, client_address: str | None = None) -> dict[str, Any]:
    """A signed result's FHIR DiagnosticReport opened for reading: audited like a case."""
    decision = signed_decision_get(user=acting_user, decision_uuid=decision_uuid)
    record_view(actor=acting_user, obj=decision, client_address=client_address)
    return fhir_diagnostic_report(decision=decision)
