"""The bulk path's activity event (built without pydantic) is the event the typed catalogue would give."""
from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

import orjson
import pytest

from services.activities.activities.service import activity_event, submitted_event
from shared.events import ACTIVITY_SUBMITTED, parse_event
from shared.logs import request_id_var


def decided(**overrides) -> dict:
    now = datetime(2026, 3, 2, 4, 5, 6, 789, tzinfo=timezone.utc)
    return {
        "id": uuid.uuid4(), "volunteer_id": uuid.uuid4(), "project_id": uuid.uuid4(), "program_id": uuid.uuid4(),
        "organization_id": uuid.uuid4(), "volunteer_organization_id": uuid.uuid4(), "submitter_organization_id": uuid.uuid4(),
        "activity_type": "clean_up", "focus_area": "environment", "project_focus_areas": ["environment", "youth"],
        "date": date(2026, 3, 1), "hours": 2.25, "approved_hours": None, "location_code": "1201",
        "beneficiaries_female": 3, "beneficiaries_male": 0, "beneficiaries_other": 1, "beneficiaries_children": 2,
        "description": "ក្រុមសម្អាត: cleaned the market", "evidence_urls": [], "client_reference": "ref-1",
        "status": "submitted", "status_reason": None, "decided_at": None, "version": 1, "revision": 1,
        "conflict": None, "created_at": now, "updated_at": now, **overrides,
    }


@pytest.mark.parametrize("request_id", [None, "req-42"])
@pytest.mark.parametrize("overrides", [{}, {"hours": 24.0, "project_focus_areas": []}, {"hours": 0.01}])
def test_the_encoded_event_is_the_models_event(request_id, overrides):
    values = decided(**overrides)
    token = request_id_var.set(request_id)
    try:
        encoded = submitted_event(values)
        typed = activity_event(ACTIVITY_SUBMITTED, values)
    finally:
        request_id_var.reset(token)
    parsed = parse_event(encoded.value)
    # Byte for byte what the envelope model writes for the same event (a consumer cannot tell them apart).
    assert encoded.value == parsed.to_bytes()
    assert parsed.payload() == typed.payload()
    assert parsed.data == typed.data
    same = ("specversion", "source", "type", "subject", "datacontenttype", "dataschema", "requestid", "traceparent")
    assert {k: getattr(parsed, k) for k in same} == {k: getattr(typed, k) for k in same}
    assert (encoded.id, encoded.type, encoded.subject) == (parsed.id, ACTIVITY_SUBMITTED, str(values["id"]))
    assert parsed.time.tzinfo is not None and abs((parsed.time - typed.time).total_seconds()) < 5
    assert "requestid" in orjson.loads(encoded.value) if request_id else "requestid" not in orjson.loads(encoded.value)


def test_two_encoded_events_never_share_an_id():
    values = decided()
    assert submitted_event(values).id != submitted_event(values).id
