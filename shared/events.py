"""The typed event catalogue and the CloudEvents 1.0 envelope every service publishes and consumes.

Every event type is listed once here with its payload model; producers and consumers import it and
the AsyncAPI document is generated from it. Payloads never carry names, phones, emails or guardian
details (§5): they identify people only by their pseudonymous ids.

Each publishing service has a section: its type constants (`VOLUNTEER_REGISTERED = "vmc.volunteer.
registered"`), which producers and consumers' handler tables use instead of strings, then its payload
models; CATALOGUE lists every type once. The service manifest (shared/manifest.py) names the types each
service publishes, and tests/unit/test_manifest.py checks that every handler names a type listed here.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

REGISTRY_TOPIC = "vmc.registry.v1"
ACTIVITIES_TOPIC = "vmc.activities.v1"


def source_of(topic: str) -> str:
    """The CloudEvents `source` of the events on `topic`: its publisher's, from the service manifest."""
    # Imported here rather than at the top: the manifest lists its services' event types with this
    # module's constants, so it imports this module first.
    from shared.manifest import SOURCES

    return SOURCES[topic]


def dead_letter_topic(consumer: str) -> str:
    return f"vmc.{consumer}.dlq"


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- registry ---------------------------------------------------------------------------------
ORGANIZATION_CREATED = "vmc.organization.created"
ORGANIZATION_UPDATED = "vmc.organization.updated"
PROGRAM_CREATED = "vmc.program.created"
PROJECT_CREATED = "vmc.project.created"
PROJECT_UPDATED = "vmc.project.updated"
VOLUNTEER_REGISTERED = "vmc.volunteer.registered"
VOLUNTEER_UPDATED = "vmc.volunteer.updated"
VOLUNTEER_ERASED = "vmc.volunteer.erased"
VOLUNTEER_MERGED = "vmc.volunteer.merged"
ENROLLMENT_STARTED = "vmc.enrollment.started"
ENROLLMENT_ENDED = "vmc.enrollment.ended"
LOCATIONS_IMPORTED = "vmc.locations.imported"


class OrganizationChanged(Payload):
    id: uuid.UUID
    name: str | None = None
    name_km: str | None = None
    kind: str
    parent_id: uuid.UUID | None = None
    province_codes: list[str] = []
    national: bool = False


class ProgramCreated(Payload):
    id: uuid.UUID
    code: str


class ProjectChanged(Payload):
    id: uuid.UUID
    program_id: uuid.UUID
    organization_id: uuid.UUID
    focus_areas: list[str] = []
    location_codes: list[str] = []
    start_date: date | None = None
    end_date: date | None = None


class VolunteerChanged(Payload):
    """Pseudonymous: what statistics need, nothing that names or reaches the person."""

    id: uuid.UUID
    organization_id: uuid.UUID
    sex: str
    date_of_birth: date
    residence_province: str
    residence_commune: str | None = None
    education_level: str | None = None
    disability: str | None = None


class VolunteerErased(Payload):
    id: uuid.UUID


class VolunteerMerged(Payload):
    survivor_id: uuid.UUID
    duplicate_id: uuid.UUID


class EnrollmentChanged(Payload):
    id: uuid.UUID
    volunteer_id: uuid.UUID
    project_id: uuid.UUID
    role: str | None = None
    started_on: date
    ended_on: date | None = None
    end_reason: str | None = None


class LocationRecord(Payload):
    code: str
    level: str
    parent_code: str | None = None


class LocationsImported(Payload):
    locations: list[LocationRecord]


# ---- activities -------------------------------------------------------------------------------
ACTIVITY_SUBMITTED = "vmc.activity.submitted"
ACTIVITY_CORRECTED = "vmc.activity.corrected"
ACTIVITY_VERIFIED = "vmc.activity.verified"
ACTIVITY_REJECTED = "vmc.activity.rejected"
ACTIVITY_VOIDED = "vmc.activity.voided"
ACTIVITY_REASSIGNED = "vmc.activity.reassigned"
ASSESSMENT_RECORDED = "vmc.assessment.recorded"
ASSESSMENT_REPLACED = "vmc.assessment.replaced"


class Beneficiaries(Payload):
    """People reached; `children` counts those of the three who are under 18."""

    female: int = Field(0, ge=0)
    male: int = Field(0, ge=0)
    other: int = Field(0, ge=0)
    children: int = Field(0, ge=0)


class ActivityChanged(Payload):
    """An activity's full state after a change: everything analytics needs to place the figure, no
    description, evidence or reason (free text may name people). `revision` grows with every change of
    the activity (a correction, a decision, a merge), so a consumer keeps the highest it has seen;
    `version` counts corrections only (the history partners see)."""

    id: uuid.UUID
    volunteer_id: uuid.UUID
    project_id: uuid.UUID
    program_id: uuid.UUID
    organization_id: uuid.UUID
    activity_type: str
    focus_area: str
    project_focus_areas: list[str] = []
    date: date
    hours: float
    approved_hours: float | None = None
    location_code: str
    beneficiaries: Beneficiaries
    status: Literal["submitted", "verified", "rejected", "voided"]
    version: int
    revision: int


class AssessmentChanged(Payload):
    """A skills assessment as recorded; `replaces` names the assessment it took the place of."""

    id: uuid.UUID
    volunteer_id: uuid.UUID
    instrument: str
    phase: Literal["baseline", "midline", "endline"]
    taken_on: date
    scores: dict[str, int]
    total: int
    replaces: uuid.UUID | None = None


@dataclass(frozen=True)
class EventSpec:
    type: str
    topic: str
    payload: type[Payload]
    version: int
    summary: str

    @property
    def dataschema(self) -> str:
        return f"urn:vmc:schema:{self.type}:v{self.version}"


CATALOGUE: dict[str, EventSpec] = {
    spec.type: spec
    for spec in [
        EventSpec(ORGANIZATION_CREATED, REGISTRY_TOPIC, OrganizationChanged, 1, "An organisation was registered."),
        EventSpec(ORGANIZATION_UPDATED, REGISTRY_TOPIC, OrganizationChanged, 1, "An organisation changed (full state)."),
        EventSpec(PROGRAM_CREATED, REGISTRY_TOPIC, ProgramCreated, 1, "A programme was created."),
        EventSpec(PROJECT_CREATED, REGISTRY_TOPIC, ProjectChanged, 1, "A project was created."),
        EventSpec(PROJECT_UPDATED, REGISTRY_TOPIC, ProjectChanged, 1, "A project changed (full state)."),
        EventSpec(VOLUNTEER_REGISTERED, REGISTRY_TOPIC, VolunteerChanged, 1, "A volunteer was registered."),
        EventSpec(VOLUNTEER_UPDATED, REGISTRY_TOPIC, VolunteerChanged, 1, "A volunteer's statistical attributes changed."),
        EventSpec(VOLUNTEER_ERASED, REGISTRY_TOPIC, VolunteerErased, 1, "A volunteer's direct identifiers were erased."),
        EventSpec(VOLUNTEER_MERGED, REGISTRY_TOPIC, VolunteerMerged, 1, "A duplicate volunteer was merged into a survivor."),
        EventSpec(ENROLLMENT_STARTED, REGISTRY_TOPIC, EnrollmentChanged, 1, "A volunteer was enrolled in a project."),
        EventSpec(ENROLLMENT_ENDED, REGISTRY_TOPIC, EnrollmentChanged, 1, "An enrolment ended."),
        EventSpec(LOCATIONS_IMPORTED, REGISTRY_TOPIC, LocationsImported, 1, "Gazetteer entries were added or renamed."),
        EventSpec(ACTIVITY_SUBMITTED, ACTIVITIES_TOPIC, ActivityChanged, 1, "A volunteer's activity was logged."),
        EventSpec(ACTIVITY_CORRECTED, ACTIVITIES_TOPIC, ActivityChanged, 1, "A submitted activity was corrected (a new version)."),
        EventSpec(ACTIVITY_VERIFIED, ACTIVITIES_TOPIC, ActivityChanged, 1, "An activity was verified (approved_hours may be fewer than claimed)."),
        EventSpec(ACTIVITY_REJECTED, ACTIVITIES_TOPIC, ActivityChanged, 1, "An activity was rejected."),
        EventSpec(ACTIVITY_VOIDED, ACTIVITIES_TOPIC, ActivityChanged, 1, "An activity was voided."),
        EventSpec(ACTIVITY_REASSIGNED, ACTIVITIES_TOPIC, ActivityChanged, 1, "An activity moved to the surviving volunteer of a merge."),
        EventSpec(ASSESSMENT_RECORDED, ACTIVITIES_TOPIC, AssessmentChanged, 1, "A skills assessment was recorded."),
        EventSpec(ASSESSMENT_REPLACED, ACTIVITIES_TOPIC, AssessmentChanged, 1, "A skills assessment replaced an earlier one of the same phase."),
    ]
}


class CloudEvent(BaseModel):
    """CloudEvents 1.0, structured JSON mode. Extension attributes carry request and trace context."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str
    type: str
    subject: str
    time: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str | None = None
    requestid: str | None = None
    traceparent: str | None = None
    data: dict[str, Any]

    def payload(self) -> Payload:
        """The typed payload; raises `UnknownEventType` or `pydantic.ValidationError`."""
        spec = CATALOGUE.get(self.type)
        if spec is None:
            raise UnknownEventType(self.type)
        return spec.payload.model_validate(self.data)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))


class UnknownEventType(Exception):
    pass


class MalformedEvent(Exception):
    pass


def new_event(type_: str, subject: uuid.UUID | str, payload: Payload, request_id: str | None = None) -> CloudEvent:
    spec = CATALOGUE[type_]
    if not isinstance(payload, spec.payload):
        raise TypeError(f"{type_} carries {spec.payload.__name__}, not {type(payload).__name__}")
    return CloudEvent(
        source=source_of(spec.topic),
        type=type_,
        subject=str(subject),
        dataschema=spec.dataschema,
        requestid=request_id,
        data=payload.model_dump(mode="json"),
    )


@dataclass(frozen=True)
class EncodedEvent:
    """An event already in its wire form (what `CloudEvent.to_bytes()` gives), for the outbox."""

    id: str
    type: str
    subject: str
    value: bytes


def encode_event(type_: str, subject: uuid.UUID | str, data: dict[str, Any], request_id: str | None = None) -> EncodedEvent:
    """The bytes `new_event(...).to_bytes()` would give for a payload already dumped in JSON mode (plain
    str, int, float, bool, None, lists and dicts), without building two pydantic models per event: for
    bulk writes, where that was the largest cost per item (a batch of 1000: ~90 ms of ~250). The caller
    vouches that `data` is the type's payload; tests/unit/test_activity_events.py holds the two forms equal."""
    spec = CATALOGUE[type_]
    envelope = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": source_of(spec.topic), "type": type_,
                "subject": str(subject), "time": datetime.now(timezone.utc), "datacontenttype": "application/json",
                "dataschema": spec.dataschema}
    if request_id is not None:
        envelope["requestid"] = request_id
    envelope["data"] = data
    return EncodedEvent(envelope["id"], type_, envelope["subject"], orjson.dumps(envelope, option=orjson.OPT_UTC_Z))


def parse_event(raw: bytes | None) -> CloudEvent:
    """Decode a Kafka value into an envelope; anything that is not one raises `MalformedEvent`."""
    if raw is None:
        raise MalformedEvent("empty message value")
    try:
        return CloudEvent.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise MalformedEvent(f"not a CloudEvents 1.0 JSON envelope: {exc}") from exc


def asyncapi_document(title: str = "VMC Connect events", version: str = "1.0.0") -> dict[str, Any]:
    """AsyncAPI 3.0 catalogue generated from CATALOGUE."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for spec in CATALOGUE.values():
        key = spec.type.replace(".", "_")
        schema = spec.payload.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[spec.payload.__name__] = schema
        messages[key] = {
            "name": spec.type,
            "title": spec.type,
            "summary": spec.summary,
            "contentType": "application/cloudevents+json",
            # Structured mode: the whole envelope is the Kafka value and the relay sets no Kafka headers, so
            # none are declared; the record key is the subject, which keeps an aggregate's events in order.
            "bindings": {"kafka": {
                "key": {"type": "string", "description": "The event's subject (the aggregate id)"},
                "bindingVersion": "0.5.0",
            }},
            "payload": {
                "type": "object",
                "required": ["specversion", "id", "source", "type", "subject", "time", "data"],
                "properties": {
                    "specversion": {"const": "1.0"},
                    "id": {"type": "string", "format": "uuid"},
                    "source": {"const": source_of(spec.topic)},
                    "type": {"const": spec.type},
                    "subject": {"type": "string"},
                    "time": {"type": "string", "format": "date-time"},
                    "datacontenttype": {"const": "application/json"},
                    "dataschema": {"const": spec.dataschema},
                    "requestid": {"type": "string"},
                    "data": {"$ref": f"#/components/schemas/{spec.payload.__name__}"},
                },
            },
        }
        channel = channels.setdefault(
            spec.topic.replace(".", "_"),
            {"address": spec.topic, "messages": {}, "description": f"Events of {source_of(spec.topic)}"},
        )
        channel["messages"][key] = {"$ref": f"#/components/messages/{key}"}
    for channel_key, channel in channels.items():
        operations[f"publish_{channel_key}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_key}"},
            "messages": [{"$ref": f"#/channels/{channel_key}/messages/{m}"} for m in channel["messages"]],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": title, "version": version, "description": "CloudEvents 1.0 on Kafka; key = aggregate id."},
        "defaultContentType": "application/cloudevents+json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
