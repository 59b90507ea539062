"""The hospital side of the integration tests: a real Orthanc PACS with DICOMweb
(Debian's packages, started once per test session on free ports), an integration
account, and DICOM studies made with pydicom."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.uid import generate_uid

from accounts.models import CareUnit
from devtools.orthanc import OrthancServer, new_server
from diagnostics.models import IntegrationAccount, ModelVersion
from diagnostics.services.integration import integration_account_create
from tests.diagnostics_tests.dicom_factory import dicom_bytes


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    server = new_server(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pacs(orthanc: OrthancServer) -> Iterator[OrthancServer]:
    """The session's Orthanc, empty for this test and running (a test may stop it)."""
    if not orthanc.alive():
        orthanc.start()
    orthanc.clear()
    yield orthanc
    if not orthanc.alive():
        orthanc.start()


def study_bytes(count: int = 2, **extra: Any) -> tuple[str, list[bytes]]:
    """(original Study Instance UID, ``count`` PS3.10 CT instances of that study)."""
    study, series = generate_uid(), generate_uid()
    items = [
        dicom_bytes(
            extra={"StudyInstanceUID": study, "SeriesInstanceUID": series, "StudyDescription": "CHEST CT", **extra}
        )
        for _ in range(count)
    ]
    return study, items


@pytest.fixture
def integration(care_unit: CareUnit, active_model: ModelVersion, pacs: OrthancServer) -> tuple[IntegrationAccount, str]:
    """An integration account for the PACS in the test's care unit: (account, token)."""
    return integration_account_create(
        acting_user=None,
        name="Radiology PACS",
        unit=care_unit,
        task=active_model.task,
        ae_titles=["MODALITY1"],
        dicomweb_url=pacs.dicomweb_url,
        pull_enabled=True,
        pull_modalities="CT",
        pull_study_description="CHEST*",
    )


def multipart(parts: list[bytes], boundary: str = "cw-test-boundary") -> tuple[bytes, str]:
    from diagnostics.interop.dicomweb import encode_multipart

    return encode_multipart(
        parts, boundary=boundary
    ), f'multipart/related; type="application/dicom"; boundary={boundary}'
