"""Unit tests of shared.events: the catalogue's rules, the CloudEvents envelope and the AsyncAPI document."""
from __future__ import annotations

import re
import uuid
from datetime import date, timezone

import orjson
import pytest
from pydantic import ValidationError

from shared.events import (
    CATALOGUE,
    CloudEvent,
    EnrollmentChanged,
    LocationRecord,
    LocationsImported,
    MalformedEvent,
    OrganizationChanged,
    Payload,
    ProgramCreated,
    UnknownEventType,
    VolunteerChanged,
    asyncapi_document,
    dead_letter_topic,
    new_event,
    parse_event,
)
from shared.manifest import SOURCES

# Words that would mean a payload reaches or names a person (§5: events carry none of these).
PERSONAL = ("phone", "email", "mail", "guardian", "address", "first_name", "last_name", "full_name",
            "birth_place", "national_id", "id_card", "passport")
# Organisations are public bodies: their names may travel; nobody else's may.
NAMED_PAYLOADS = {OrganizationChanged}


def payload_properties(model: type[Payload]) -> set[str]:
    """Every property name of a payload's JSON schema, nested models included."""
    schema = model.model_json_schema()
    names = set(schema.get("properties", {}))
    for sub in schema.get("$defs", {}).values():
        names |= set(sub.get("properties", {}))
    return names


def volunteer_payload() -> VolunteerChanged:
    return VolunteerChanged(
        id=uuid.uuid4(), organization_id=uuid.uuid4(), sex="female", date_of_birth=date(2004, 5, 17),
        residence_province="12",
    )


def volunteer_event(**overrides) -> CloudEvent:
    payload = volunteer_payload()
    return new_event("vmc.volunteer.registered", payload.id, payload, **overrides)


# ---- the catalogue ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec", CATALOGUE.values(), ids=lambda s: s.type)
def test_catalogue_entry_follows_the_naming_and_versioning_rules(spec):
    assert re.fullmatch(r"vmc\.[a-z_]+\.[a-z_]+", spec.type)
    assert spec.topic in SOURCES and re.fullmatch(r"vmc\.[a-z]+\.v\d+", spec.topic)
    assert spec.dataschema == f"urn:vmc:schema:{spec.type}:v{spec.version}" and spec.version >= 1
    assert spec.summary.endswith(".")


@pytest.mark.parametrize("spec", CATALOGUE.values(), ids=lambda s: s.type)
def test_payloads_carry_no_personal_identifiers(spec):
    properties = payload_properties(spec.payload)
    assert not [p for p in properties if any(word in p for word in PERSONAL)]
    if spec.payload not in NAMED_PAYLOADS:
        assert not [p for p in properties if "name" in p], f"{spec.type} would carry a name"


@pytest.mark.parametrize("spec", CATALOGUE.values(), ids=lambda s: s.type)
def test_payloads_refuse_unknown_fields_and_are_immutable(spec):
    assert spec.payload.model_config.get("extra") == "forbid"
    assert spec.payload.model_config.get("frozen") is True


def test_event_types_are_unique_and_keyed_by_their_type():
    assert all(key == spec.type for key, spec in CATALOGUE.items())


def test_dead_letter_topic_is_named_after_the_consumer():
    assert dead_letter_topic("analytics") == "vmc.analytics.dlq"


# ---- the envelope -----------------------------------------------------------------------------
def test_new_event_fills_the_cloudevents_attributes():
    payload = volunteer_payload()
    event = new_event("vmc.volunteer.registered", payload.id, payload, request_id="req-1")
    assert event.specversion == "1.0" and event.datacontenttype == "application/json"
    assert event.source == "/registry" and event.type == "vmc.volunteer.registered"
    assert event.subject == str(payload.id)  # the Kafka key: order per aggregate
    assert event.dataschema == "urn:vmc:schema:vmc.volunteer.registered:v1"
    assert event.requestid == "req-1"
    assert uuid.UUID(event.id).version == 4
    assert event.time.tzinfo is not None and event.time.utcoffset() == timezone.utc.utcoffset(None)
    assert event.data == payload.model_dump(mode="json")


def test_two_events_never_share_an_id():
    assert len({volunteer_event().id for _ in range(100)}) == 100


def test_new_event_refuses_a_payload_of_another_type():
    with pytest.raises(TypeError, match="VolunteerChanged"):
        new_event("vmc.volunteer.registered", uuid.uuid4(), ProgramCreated(id=uuid.uuid4(), code="VMC"))


def test_new_event_refuses_a_type_outside_the_catalogue():
    with pytest.raises(KeyError):
        new_event("vmc.volunteer.teleported", uuid.uuid4(), volunteer_payload())


def test_envelope_survives_the_wire_with_its_typed_payload():
    event = volunteer_event(request_id="req-2")
    decoded = parse_event(event.to_bytes())
    assert decoded == event
    assert decoded.payload() == VolunteerChanged.model_validate(event.data)
    assert isinstance(decoded.payload(), VolunteerChanged)


def test_nested_payload_round_trips():
    payload = LocationsImported(locations=[LocationRecord(code="1201", level="district", parent_code="12")])
    event = new_event("vmc.locations.imported", "gazetteer", payload)
    assert parse_event(event.to_bytes()).payload() == payload


def test_absent_optional_attributes_are_left_out_not_sent_as_null():
    wire = orjson.loads(volunteer_event().to_bytes())
    assert "requestid" not in wire and "traceparent" not in wire
    assert set(wire) == {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data"}


def test_extension_attributes_are_kept():
    wire = orjson.loads(volunteer_event().to_bytes())
    wire["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    wire["partnerext"] = "kept"
    decoded = parse_event(orjson.dumps(wire))
    assert decoded.traceparent == wire["traceparent"]
    assert orjson.loads(decoded.to_bytes())["partnerext"] == "kept"


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json {",
        b"[]",
        b'"a string"',
        orjson.dumps({"specversion": "1.0", "id": "x", "source": "/registry", "subject": "s", "data": {}}),  # no type
        orjson.dumps({"specversion": "0.3", "id": "x", "source": "/r", "type": "t", "subject": "s", "data": {}}),
        orjson.dumps({"specversion": "1.0", "id": "x", "source": "/r", "type": "t", "subject": "s", "data": []}),
        orjson.dumps({"specversion": "1.0", "id": "x", "source": "/r", "type": "t", "subject": "s", "data": {},
                      "datacontenttype": "text/xml"}),
    ],
    ids=["none", "empty", "not-json", "array", "string", "no-type", "old-specversion", "data-not-object", "xml"],
)
def test_anything_that_is_not_an_envelope_is_malformed(raw):
    with pytest.raises(MalformedEvent):
        parse_event(raw)


def test_payload_of_an_unknown_type_raises_unknown_event_type():
    wire = orjson.loads(volunteer_event().to_bytes()) | {"type": "vmc.volunteer.teleported"}
    event = parse_event(orjson.dumps(wire))  # a valid envelope: consumers may skip types they ignore
    with pytest.raises(UnknownEventType):
        event.payload()


@pytest.mark.parametrize(
    "change",
    [
        {"id": "not-a-uuid"},
        {"date_of_birth": "yesterday"},
        {"phone": "+85512345678"},  # an unknown field: a producer cannot smuggle personal data in
    ],
    ids=["bad-uuid", "bad-date", "unknown-field"],
)
def test_payload_breaking_its_schema_raises_validation_error(change):
    event = volunteer_event()
    broken = event.model_copy(update={"data": {**event.data, **change}})
    with pytest.raises(ValidationError):
        broken.payload()


def test_enrollment_payload_keeps_dates_as_dates():
    payload = EnrollmentChanged(
        id=uuid.uuid4(), volunteer_id=uuid.uuid4(), project_id=uuid.uuid4(), started_on=date(2026, 1, 5)
    )
    event = new_event("vmc.enrollment.started", payload.id, payload)
    assert event.data["started_on"] == "2026-01-05"
    assert parse_event(event.to_bytes()).payload().started_on == date(2026, 1, 5)


# ---- AsyncAPI ---------------------------------------------------------------------------------
def refs(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(document: dict, ref: str):
    assert ref.startswith("#/"), ref
    node = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_asyncapi_lists_every_catalogue_type_once_in_its_topics_channel():
    document = asyncapi_document()
    assert document["asyncapi"] == "3.0.0"
    messages = document["components"]["messages"]
    assert sorted(m["name"] for m in messages.values()) == sorted(CATALOGUE)
    by_address = {c["address"]: c for c in document["channels"].values()}
    assert set(by_address) == {spec.topic for spec in CATALOGUE.values()}
    for spec in CATALOGUE.values():
        channel_messages = by_address[spec.topic]["messages"]
        assert sum(1 for m in channel_messages.values() if resolve(document, m["$ref"])["name"] == spec.type) == 1


def test_asyncapi_message_schemas_match_the_envelope_and_payload():
    document = asyncapi_document()
    for spec in CATALOGUE.values():
        message = document["components"]["messages"][spec.type.replace(".", "_")]
        properties = message["payload"]["properties"]
        assert properties["type"] == {"const": spec.type}
        assert properties["source"] == {"const": SOURCES[spec.topic]}
        assert properties["dataschema"] == {"const": spec.dataschema}
        data_schema = resolve(document, properties["data"]["$ref"])
        assert set(data_schema["properties"]) == set(spec.payload.model_fields)


def test_every_asyncapi_reference_resolves_and_the_document_is_json():
    document = asyncapi_document()
    found = refs(document)
    assert found, "the document links messages to schemas"
    for ref in found:
        resolve(document, ref)
    assert orjson.loads(orjson.dumps(document)) == document


def test_asyncapi_operations_send_on_existing_channels():
    document = asyncapi_document()
    for operation in document["operations"].values():
        assert operation["action"] == "send"
        channel = resolve(document, operation["channel"]["$ref"])
        assert operation["messages"] and all(resolve(document, m["$ref"]) for m in operation["messages"])
        assert len(operation["messages"]) == len(channel["messages"])
