"""The orphan sweep deletes only content-addressed objects that no row refers to:
every kind of row holding a storage name keeps its object."""

from __future__ import annotations

from datetime import timedelta

import pytest

from diagnostics.intake import storage
from diagnostics.models import Prediction
from tests.factories import make_prediction

pytestmark = pytest.mark.django_db


def _store(data: bytes) -> str:
    name, _ = storage.store_bytes(data=data, sha256=storage.sha256_bytes(data))
    return name


def test_the_sweep_keeps_every_referenced_object_and_deletes_the_rest(clinician, active_model):
    prediction = make_prediction(clinician, active_model, [0.4, 0.6])
    heatmap, slide_map, orphan = _store(b"heat map"), _store(b'{"tiles": []}'), _store(b"left by a failed upload")
    Prediction.objects.filter(pk=prediction.pk).update(heatmap_storage_name=heatmap, slide_map_storage_name=slide_map)

    deleted = storage.orphans_sweep(older_than=timedelta(0))

    assert deleted == [orphan]
    store = storage.scan_storage()
    assert store.exists(prediction.scan.storage_name) and store.exists(heatmap) and store.exists(slide_map)
    assert not store.exists(orphan)
