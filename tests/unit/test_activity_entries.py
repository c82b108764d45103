"""A batch item's hand-checked path (`plain_entry`) against the model it stands in for (`ActivityCreate`):
whatever it accepts, the model accepts with the same values; what it declines goes to the model."""
from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.activities.activities.models import ActivityCreate, Entry, plain_entry

V, P = str(uuid.uuid4()), str(uuid.uuid4())
PLAIN = {"volunteer_id": V, "project_id": P, "activity_type": "clean_up", "date": "2026-03-02", "hours": 1.5,
         "location_code": "12", "beneficiaries": {"female": 2, "male": 1, "other": 0, "children": 1},
         "client_reference": "ref-1", "description": "Beach clean-up", "evidence_urls": ["https://example.org/p/1"]}

# Values each field may take: the plain ones and the ones the model refuses or changes.
FIELD_VALUES = {
    "volunteer_id": [V, V.upper(), V.replace("-", ""), "not-a-uuid", 7, None],
    "project_id": [P, "{" + P + "}", ""],
    "activity_type": ["clean_up", "", "x" * 61, 3],
    "date": ["2026-03-02", "2026-02-30", "20260302", "2026-3-2", 20260302, "2026-03-02T00:00:00"],
    "hours": [1.5, 3, 0, -1, 24, 24.01, 1.005, 0.01, "1.5", True, float("nan"), float("inf")],
    "location_code": ["12", "1201", "1", "123", "12a4", "120101010", 12],
    "beneficiaries": [{"female": 2}, {}, None, {"female": 1, "children": 2}, {"female": True}, {"female": 2.0},
                      {"female": -1}, {"male": 1_000_001}, {"other": 1, "kids": 1}, [1, 2]],
    "client_reference": ["ref-1", None, "", " ref ", "x" * 201, "a\x01b", "e\u0301"],
    "description": ["Clean-up", None, "", "  padded ", "line\nbreak", "x" * 4001],
    "evidence_urls": [[], ["https://example.org"], ["ftp://example.org"], ["http://"], None, "https://example.org",
                      ["https://example.org/a b"], ["https://e.org"] * 21],
}


@st.composite
def items(draw) -> object:
    item = dict(PLAIN)
    for name, values in FIELD_VALUES.items():
        choice = draw(st.sampled_from(["keep", "drop", "change"]))
        if choice == "drop":
            item.pop(name)
        elif choice == "change":
            item[name] = draw(st.sampled_from(values))
    if draw(st.booleans()) and draw(st.booleans()):
        item["status"] = "verified"  # an unknown field
    return item


@settings(max_examples=400, deadline=None)
@given(items())
def test_what_the_plain_path_accepts_the_model_accepts_with_the_same_values(item):
    entry = plain_entry(item)
    if entry is None:
        return  # declined: the model decides (and words the errors)
    try:
        model = ActivityCreate.model_validate(item)
    except ValidationError as exc:
        raise AssertionError(f"plain_entry took an item the model refuses: {item!r}: {exc}") from exc
    assert entry == Entry.of(model)


def test_the_items_of_a_partners_sync_take_the_plain_path():
    assert plain_entry(PLAIN) == Entry.of(ActivityCreate.model_validate(PLAIN))
    minimal = {name: PLAIN[name] for name in ("volunteer_id", "project_id", "activity_type", "date", "hours", "location_code")}
    assert plain_entry(minimal) == Entry.of(ActivityCreate.model_validate(minimal))


def test_what_the_model_would_refuse_or_change_is_left_to_it():
    for name, value in (("hours", 1.005), ("volunteer_id", V.upper()), ("description", " padded "),
                        ("beneficiaries", None), ("status", "verified"), ("date", "2026-02-30")):
        assert plain_entry({**PLAIN, name: value}) is None, name
    assert plain_entry([PLAIN]) is None
