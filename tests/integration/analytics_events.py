"""Event logs for the analytics store's tests: a small programme's history, topics of a test's own,
and a consumer of the analytics runtime applying them into a store of the test's own."""
from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import httpx
from aiokafka import AIOKafkaProducer

from services.analytics.projections import HANDLERS, StoreBatches
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import MEMORY, AnalyticsStore
from shared.broker import ensure_topics, make_consumer, make_producer
from shared.consumer import EventConsumer
from shared.events import (
    ACTIVITY_CORRECTED, ACTIVITY_REASSIGNED, ACTIVITY_SUBMITTED, ACTIVITY_VERIFIED, ACTIVITY_VOIDED,
    ASSESSMENT_RECORDED, ASSESSMENT_REPLACED, CATALOGUE, ORGANIZATION_CREATED, ORGANIZATION_UPDATED, PROGRAM_CREATED,
    PROJECT_CREATED, REGISTRY_TOPIC, VOLUNTEER_ERASED, VOLUNTEER_MERGED, VOLUNTEER_REGISTERED, VOLUNTEER_UPDATED,
    ActivityChanged, AssessmentChanged, Beneficiaries, CloudEvent, OrganizationChanged, ProgramCreated, ProjectChanged,
    VolunteerChanged, VolunteerErased, VolunteerMerged, dead_letter_topic, new_event,
)
from shared.metrics import Metrics

T0 = datetime(2026, 3, 2, 1, 0, tzinfo=timezone.utc)


@dataclass
class Programme:
    """Ids of one small programme's entities, and its events in the order they happened."""

    org: uuid.UUID = field(default_factory=uuid.uuid4)
    program: uuid.UUID = field(default_factory=uuid.uuid4)
    project: uuid.UUID = field(default_factory=uuid.uuid4)
    survivor: uuid.UUID = field(default_factory=uuid.uuid4)
    duplicate: uuid.UUID = field(default_factory=uuid.uuid4)
    others: list[uuid.UUID] = field(default_factory=lambda: [uuid.uuid4() for _ in range(3)])
    events: list[CloudEvent] = field(default_factory=list)
    _clock: int = 0

    def add(self, type_: str, payload) -> CloudEvent:
        self._clock += 1
        subject = getattr(payload, "id", None) or payload.duplicate_id
        event = new_event(type_, subject, payload).model_copy(update={"time": T0 + timedelta(minutes=self._clock)})
        self.events.append(event)
        return event

    def activity(self, activity_id: uuid.UUID, volunteer: uuid.UUID, revision: int, status: str, hours: float = 3.0,
                 approved: float | None = None, location: str = "120101") -> ActivityChanged:
        return ActivityChanged(
            id=activity_id, volunteer_id=volunteer, project_id=self.project, program_id=self.program,
            organization_id=self.org, activity_type="teaching", focus_area="education", date=date(2026, 3, 1),
            hours=hours, approved_hours=approved, location_code=location,
            beneficiaries=Beneficiaries(female=2, male=1, children=1), status=status, version=1, revision=revision,
        )


def programme_history() -> Programme:
    """Registration, corrections, decisions (a partial approval, a void), a merge, an erasure and a
    replaced assessment: every kind of change the store must take in."""
    p = Programme()
    p.add(ORGANIZATION_CREATED, OrganizationChanged(id=p.org, kind="ngo", province_codes=["12"]))
    p.add(PROGRAM_CREATED, ProgramCreated(id=p.program, code=f"T-{p.program.hex[:8].upper()}"))
    p.add(PROJECT_CREATED, ProjectChanged(id=p.project, program_id=p.program, organization_id=p.org))
    p.add(ORGANIZATION_UPDATED, OrganizationChanged(id=p.org, kind="youth_club", province_codes=["12", "17"]))
    for i, volunteer in enumerate([p.survivor, p.duplicate, *p.others]):
        p.add(VOLUNTEER_REGISTERED, VolunteerChanged(
            id=volunteer, organization_id=p.org, sex="female" if i % 2 == 0 else "male",
            date_of_birth=date(2008 - i, 5, 1), residence_province="12"))
    p.add(VOLUNTEER_UPDATED, VolunteerChanged(id=p.survivor, organization_id=p.org, sex="female",
                                              date_of_birth=date(2006, 5, 1), residence_province="17"))
    first, second, voided = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    p.add(ACTIVITY_SUBMITTED, p.activity(first, p.duplicate, 1, "submitted"))
    p.add(ACTIVITY_CORRECTED, p.activity(first, p.duplicate, 2, "submitted", hours=4.0, location="1701"))
    p.add(ACTIVITY_VERIFIED, p.activity(first, p.duplicate, 3, "verified", hours=4.0, approved=3.5, location="1701"))
    p.add(VOLUNTEER_MERGED, VolunteerMerged(survivor_id=p.survivor, duplicate_id=p.duplicate))
    p.add(ACTIVITY_REASSIGNED, p.activity(first, p.survivor, 4, "verified", hours=4.0, approved=3.5, location="1701"))
    p.add(ACTIVITY_SUBMITTED, p.activity(second, p.others[0], 1, "submitted", hours=2.0))
    p.add(ACTIVITY_SUBMITTED, p.activity(voided, p.others[1], 1, "submitted", hours=5.0))
    p.add(ACTIVITY_VERIFIED, p.activity(voided, p.others[1], 2, "verified", hours=5.0, approved=5.0))
    p.add(ACTIVITY_VOIDED, p.activity(voided, p.others[1], 3, "voided", hours=5.0, approved=5.0))
    p.add(VOLUNTEER_ERASED, VolunteerErased(id=p.others[0]))
    baseline, redo = uuid.uuid4(), uuid.uuid4()
    scores = {"teamwork": 3, "communication": 2}
    p.add(ASSESSMENT_RECORDED, AssessmentChanged(id=baseline, volunteer_id=p.survivor, instrument="soft-skills-v1",
                                                 phase="baseline", taken_on=date(2026, 1, 5), scores=scores, total=5))
    p.add(ASSESSMENT_REPLACED, AssessmentChanged(id=redo, volunteer_id=p.survivor, instrument="soft-skills-v1",
                                                 phase="baseline", taken_on=date(2026, 1, 6), scores=scores, total=6,
                                                 replaces=baseline))
    return p


def shuffled_with_duplicates(events: list[CloudEvent], seed: int, duplicates: int) -> list[CloudEvent]:
    """The events in a random order, `duplicates` of them delivered twice (redelivery, re-publish)."""
    rng = random.Random(seed)
    delivered = events + rng.sample(events, duplicates)
    rng.shuffle(delivered)
    return delivered


async def apply_in_order(events: list[CloudEvent]) -> AnalyticsStore:
    """The reference: each event applied alone, in the order it happened, no broker involved."""
    store = AnalyticsStore(MEMORY)
    units = StoreBatches(store)
    for event in events:
        await units.apply("reference", [(event, event.payload())], HANDLERS)
    return store


@dataclass
class OwnTopics:
    """A registry and an activities topic of one test's own, and its consumer's name (group id)."""

    registry: str = field(default_factory=lambda: f"test.registry.{uuid.uuid4().hex[:10]}")
    activities: str = field(default_factory=lambda: f"test.activities.{uuid.uuid4().hex[:10]}")
    consumer: str = field(default_factory=lambda: f"analytics-test-{uuid.uuid4().hex[:10]}")

    @property
    def both(self) -> list[str]:
        return [self.registry, self.activities]

    def topic_of(self, event_type: str) -> str:
        return self.registry if CATALOGUE[event_type].topic == REGISTRY_TOPIC else self.activities


def settings_for(bootstrap: str, **overrides) -> AnalyticsSettings:
    return AnalyticsSettings(kafka_bootstrap=bootstrap, kafka_session_timeout_ms=6000, **overrides)


async def publish(settings: AnalyticsSettings, topics: OwnTopics, records: list[tuple[str, bytes | None, bytes]]) -> None:
    """Send (topic, key, value) records in this order, each acknowledged before the next is sent, so a
    partition holds them in the order given."""
    producer: AIOKafkaProducer = make_producer(settings, "analytics-test")
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


def records_of(topics: OwnTopics, events: list[CloudEvent], keys: random.Random) -> list[tuple[str, bytes, bytes]]:
    """Each event on its topic under a random key, so the events spread over the partitions."""
    return [(topics.topic_of(e.type), uuid.UUID(int=keys.getrandbits(128)).bytes, e.to_bytes()) for e in events]


async def make_topics(settings: AnalyticsSettings, topics: OwnTopics) -> None:
    await ensure_topics(settings, [*topics.both, dead_letter_topic(topics.consumer)])


def store_consumer(settings: AnalyticsSettings, topics: OwnTopics, store: AnalyticsStore,
                   group_id: str | None = None) -> tuple[EventConsumer, Metrics]:
    """The analytics runtime as the service builds it (shared.consumer + StoreBatches), on the test's topics."""
    metrics = Metrics("analytics-test")
    consumer = EventConsumer(
        topics.consumer, topics.both, HANDLERS, StoreBatches(store),
        lambda group, names: make_consumer(settings, group, names),
        lambda: make_producer(settings, f"{topics.consumer}-dlq"),
        metrics, max_retries=2, group_id=group_id,
    )
    return consumer, metrics


def processed(store: AnalyticsStore, consumer: str) -> dict[str, int]:
    """Outcome → number of event ids the store recorded for `consumer`."""
    return dict(store.query("SELECT outcome, count(*) FROM processed_events WHERE consumer = $1 GROUP BY outcome",
                            [consumer]))


def figures(store: AnalyticsStore, project: uuid.UUID) -> dict:
    """What a dashboard reads of one project: verified hours, activities, distinct volunteers (merges
    resolved), and the current assessments' totals."""
    hours, activities, volunteers = store.query(
        """SELECT coalesce(sum(approved_hours), 0), count(*), count(DISTINCT eff_volunteer_id)
           FROM activity_facts WHERE project_id = $1 AND status = 'verified'""", [project])[0]
    return {"verified_hours": hours, "verified_activities": activities, "volunteers": volunteers}


async def organisation_hours(admin: httpx.AsyncClient, organization: str, **params) -> float | None:
    """The organisation's hours through the gateway (one group: the organisation, or its one project),
    None while it has none or analytics does not know it yet."""
    answer = await admin.get("/analytics/hours", params={"organization": organization, **params})
    if answer.status_code == 404:  # the organisation's own event is not in the store yet
        return None
    assert answer.status_code == 200, answer.text
    rows = answer.json()["rows"]
    return rows[0]["hours"] if rows else None
