"""A physician-signed result as the hospital reads it, no Django imports:

- a DICOM Comprehensive SR following TID 1500 (Measurement Report) with the signed
  stage as a coded qualitative evaluation, the AI's stage beside it, the model as
  the device observer and algorithm, the signer as the person observer and the
  verifying observer (name, organisation, time), the signature's meaning as a comment,
  and references to the original SOP instances; a correction names the SR it
  replaces in the Predecessor Documents Sequence;
- the heat map as a Secondary Capture image in the same original study;
- a FHIR R4 DiagnosticReport with its stage Observation.

Stage labels are data (each model has its own), so they are coded in a private
coding scheme; the concept names are DICOM (DCM) and LOINC codes where one exists.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian

MANUFACTURER = "CancerWeb"
CODING_SCHEME = "99CANCERWEB"
SIGNED_STAGE = hd.sr.CodedConcept("SIGNEDSTAGE", CODING_SCHEME, "Physician-signed stage")
AI_STAGE = hd.sr.CodedConcept("AISTAGE", CODING_SCHEME, "AI-suggested stage")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
FHIR_STAGE_CODE = {"system": "http://loinc.org", "code": "21908-9", "display": "Stage group.clinical Cancer"}
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902


@dataclass(frozen=True)
class Evidence:
    """One original instance the result refers to, with the patient and study
    attributes the PACS files a new object under (all from the encrypted link table)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    accession_number: str
    patient: dict[str, str]
    study: dict[str, str]

    def dataset(self) -> Dataset:
        ds = Dataset()
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.series_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        ds.AccessionNumber = self.accession_number
        ds.PatientName = self.patient.get("PatientName", "")
        ds.PatientID = self.patient.get("PatientID", "")
        ds.PatientBirthDate = self.patient.get("PatientBirthDate", "")
        ds.PatientSex = self.patient.get("PatientSex", "")
        if self.patient.get("IssuerOfPatientID"):
            ds.IssuerOfPatientID = self.patient["IssuerOfPatientID"]
        ds.StudyDate = self.study.get("StudyDate", "")
        ds.StudyTime = self.study.get("StudyTime", "")
        ds.StudyID = self.study.get("StudyID", "")
        ds.ReferringPhysicianName = self.study.get("ReferringPhysicianName", "")
        ds.Modality = "OT"
        return ds


@dataclass(frozen=True)
class SignedResult:
    stage: str
    ai_stage: str | None  # None: the AI gave no suggestion (input outside its training data)
    labels: Sequence[str]
    probability: float
    model_name: str
    model_version: str
    model_uid: str
    signer_name: str
    signed_at: datetime
    meaning: str  # confirmed | rejected | corrected
    reason: str
    organization: str


def stage_code(label: str, labels: Sequence[str]) -> hd.sr.CodedConcept:
    """A stage in the private scheme: its code is its slug, its meaning the label."""
    slug = re.sub(r"[^A-Z0-9]+", "-", label.upper()).strip("-")[:16] or f"S{list(labels).index(label)}"
    return hd.sr.CodedConcept(slug, CODING_SCHEME, label[:64])


def _person_name(name: str) -> str:
    """'Peter Physician' -> 'Physician^Peter' (PS3.5 PN: family^given)."""
    parts = name.split()
    if len(parts) < 2:
        return name
    return f"{parts[-1]}^{' '.join(parts[:-1])}"


def _da_tm(when: datetime) -> str:
    return when.strftime("%Y%m%d%H%M%S")


def build_sr(
    *,
    evidence: Sequence[Evidence],
    result: SignedResult,
    series_uid: str,
    sop_instance_uid: str,
    previous: Sequence[tuple[str, str]] = (),
) -> Dataset:
    """The Comprehensive SR of a signed result. ``previous``: (series UID, SOP instance
    UID) of SRs this one replaces, in the same study."""
    datasets = [e.dataset() for e in evidence]
    observation = hd.sr.ObservationContext(
        observer_person_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=_person_name(result.signer_name), organization_name=result.organization[:64] or None
            ),
        ),
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=result.model_uid,
                name=result.model_name[:64],
                manufacturer_name=MANUFACTURER,
                model_name=result.model_version[:64],
            ),
        ),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="CancerWeb signed result"),
        algorithm_id=hd.sr.AlgorithmIdentification(name=result.model_name[:64], version=result.model_version[:64]),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=SIGNED_STAGE, value=stage_code(result.stage, result.labels)),
            *(
                [hd.sr.QualitativeEvaluation(name=AI_STAGE, value=stage_code(result.ai_stage, result.labels))]
                if result.ai_stage is not None
                else []
            ),
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=e.sop_class_uid, referenced_sop_instance_uid=e.sop_instance_uid
            )
            for e in evidence
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation,
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[group],
    )
    comment = f"Signed by {result.signer_name} at {result.signed_at.isoformat()}; meaning: {result.meaning}"
    if result.reason:
        comment += f"; reason: {result.reason}"
    if result.ai_stage is None:
        comment += "; the AI gave no suggestion (the image was outside what its model was trained on)"
    report[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=COMMENT, value=comment[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    )
    predecessors = []
    for prev_series, prev_uid in previous:
        ds = Dataset()
        ds.StudyInstanceUID = evidence[0].study_uid
        ds.SeriesInstanceUID = prev_series
        ds.SOPInstanceUID = prev_uid
        ds.SOPClassUID = ComprehensiveSRStorage
        ds.PatientID = evidence[0].patient.get("PatientID", "")
        predecessors.append(ds)
    sr = hd.sr.ComprehensiveSR(
        evidence=datasets,
        content=report[0],
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=_person_name(result.signer_name),
        verifying_organization=result.organization[:64] or MANUFACTURER,
        previous_versions=predecessors or None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description="CancerWeb AI result (physician-signed)",
    )
    # The verification time is the signature's, not the time the object was built.
    sr.VerifyingObserverSequence[0].VerificationDateTime = _da_tm(result.signed_at)
    sr.ContentDate, sr.ContentTime = _da_tm(result.signed_at)[:8], _da_tm(result.signed_at)[8:]  # type: ignore[assignment]
    return sr


def build_heatmap(*, evidence: Evidence, rgb: np.ndarray, series_uid: str, sop_instance_uid: str) -> Dataset:
    """The heat map (H x W x 3, uint8) as a Secondary Capture image in the original study."""
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=evidence.dataset(),
        pixel_array=np.ascontiguousarray(rgb, dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description="CancerWeb AI heat map",
    )
    sc.BurnedInAnnotation = "NO"
    sc.ImageComments = "Grad-CAM heat map of the AI suggestion; not a diagnosis on its own"
    return sc


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def fhir_report(
    *,
    report_id: str,
    result: SignedResult,
    case_ref: str,
    study_uid: str | None,
    accession_number: str | None,
    amended: bool,
) -> dict[str, Any]:
    """A FHIR R4 DiagnosticReport with the stage Observation contained in it and the
    ImagingStudy referenced by its DICOM Study Instance UID (a logical reference: the
    hospital's ImagingStudy lives in its own FHIR server)."""
    issued = result.signed_at.isoformat()
    performer = {"display": result.signer_name}
    stage = {
        "coding": [
            {
                "system": f"urn:cancerweb:stage:{CODING_SCHEME}",
                "code": stage_code(result.stage, result.labels).value,
                "display": result.stage,
            }
        ],
        "text": result.stage,
    }
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "stage",
        "status": "amended" if amended else "final",
        "code": {"coding": [FHIR_STAGE_CODE], "text": "Cancer stage (physician-signed)"},
        "subject": {"identifier": {"system": "urn:cancerweb:case", "value": case_ref}},
        "issued": issued,
        "effectiveDateTime": issued,
        "performer": [performer],
        "valueCodeableConcept": stage,
        "method": {"text": f"{result.model_name} {result.model_version}, reviewed and signed ({result.meaning})"},
        "device": {"display": f"{result.model_name} {result.model_version}"},
    }
    if result.reason:
        observation["note"] = [{"text": result.reason}]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "contained": [observation],
        "status": "amended" if amended else "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}],
            "text": "AI-assisted staging, physician-signed",
        },
        "subject": {"identifier": {"system": "urn:cancerweb:case", "value": case_ref}},
        "issued": issued,
        "effectiveDateTime": issued,
        "performer": [performer],
        "resultsInterpreter": [performer],
        "result": [{"reference": "#stage"}],
        "conclusion": f"{result.stage} (signed by {result.signer_name}, {result.meaning})",
        "conclusionCode": [stage],
    }
    if study_uid:
        study_ref: dict[str, Any] = {
            "type": "ImagingStudy",
            "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"},
        }
        report["imagingStudy"] = [study_ref]
    if accession_number:
        report["identifier"] = [{"type": {"text": "Accession number"}, "value": accession_number}]
    return report
