"""The analytics read store fed by the consumer runtime from a real broker: each event applied once,
in any order, after duplicates; figures taken back when an activity changes; merges; poison events
dead-lettered while the figures go on; lag and freshness on /ready and /metrics of the running service.
The tests of the store alone (a DuckDB store, at most a broker: no service database) are `dialect_free`."""
from __future__ import annotations

import asyncio
import os
import random
import threading
import uuid
from datetime import date, datetime
from email.utils import parsedate_to_datetime

import duckdb
import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.analytics.figures import parse_question
from services.analytics import projections
from services.analytics.projections import HANDLERS, StoreBatches, rederive
from services.analytics.queries import (
    REPORTS, figures_of, figures_sql, rollup_for, skill_totals_answer, skills_sql, totals_for,
)
from services.analytics.store import CELLS, MEMORY, TOTALS, WRITER_NICENESS, AnalyticsStore
from shared.caller import CallerContext
from shared.events import (
    ACTIVITY_CORRECTED, ACTIVITY_REASSIGNED, ACTIVITY_REJECTED, ACTIVITY_SUBMITTED, ACTIVITY_VERIFIED, ACTIVITY_VOIDED,
    ASSESSMENT_RECORDED, ASSESSMENT_REPLACED, ORGANIZATION_CREATED, PROGRAM_CREATED, PROJECT_CREATED, VOLUNTEER_ERASED,
    VOLUNTEER_MERGED, VOLUNTEER_REGISTERED, VOLUNTEER_UPDATED, ActivityChanged, AssessmentChanged, Beneficiaries,
    OrganizationChanged, ProgramCreated, ProjectChanged, VolunteerChanged, VolunteerErased, VolunteerMerged,
    dead_letter_topic, new_event,
)
from tests.conftest import eventually
from tests.eventlog import find_events
from tests.factories import create_enrollment, register
from tests.integration.activity_factories import activity_body, log, setting
from tests.integration.analytics_events import (
    OwnTopics, Programme, apply_in_order, figures, make_topics, organisation_hours, processed, programme_history, publish, records_of, settings_for,
    shuffled_with_duplicates, store_consumer,
)


@pytest.fixture
async def rig(broker):
    """A store in memory, fed from topics of this test's own by the analytics consumer runtime."""
    topics = OwnTopics()
    settings = settings_for(broker.bootstrap)
    await make_topics(settings, topics)
    store = AnalyticsStore(MEMORY)
    consumer, metrics = store_consumer(settings, topics, store)
    consumer.start()
    try:
        yield type("Rig", (), {"topics": topics, "settings": settings, "store": store, "consumer": consumer,
                               "metrics": metrics})
    finally:
        await consumer.stop()
        store.close()


def counted(metrics, outcome: str, consumer: str) -> float:
    return metrics.consumed.labels(consumer, outcome)._value.get()


@pytest.mark.dialect_free
@pytest.mark.parametrize("seed", [1, 2])
async def test_events_in_any_order_after_duplicates_give_the_in_order_store(rig, seed):
    history = programme_history()
    delivered = shuffled_with_duplicates(history.events, seed, duplicates=8)
    await publish(rig.settings, rig.topics, records_of(rig.topics, delivered, random.Random(seed)))

    await eventually(lambda: processed(rig.store, rig.topics.consumer).get("applied") == len(history.events), 30,
                     what="every distinct event recorded once")
    expected = await apply_in_order(history.events)
    assert rig.store.contents() == expected.contents()
    # Applied once each: the duplicates were recognised, not applied again.
    assert counted(rig.metrics, "applied", rig.topics.consumer) == len(history.events)
    assert counted(rig.metrics, "duplicate", rig.topics.consumer) == 8
    assert figures(rig.store, history.project) == {"verified_hours": 3.5, "verified_activities": 1, "volunteers": 1}
    assert rig.store.as_of() == max(e.time for e in history.events)


@pytest.mark.dialect_free
async def test_replicas_under_groups_of_their_own_each_build_the_whole_store(broker):
    topics = OwnTopics()
    settings = settings_for(broker.bootstrap)
    await make_topics(settings, topics)
    history = programme_history()
    replicas = [AnalyticsStore(MEMORY) for _ in range(2)]
    consumers = [store_consumer(settings, topics, store, group_id=f"{topics.consumer}-{i}")[0]
                 for i, store in enumerate(replicas)]
    for consumer in consumers:
        consumer.start()
    try:
        await publish(settings, topics, records_of(topics, history.events, random.Random(3)))
        for store in replicas:
            await eventually(lambda: processed(store, topics.consumer).get("applied") == len(history.events), 30,
                             what="a replica applying every event of every partition")
        expected = (await apply_in_order(history.events)).contents()
        assert [store.contents() for store in replicas] == [expected, expected]
    finally:
        for consumer in consumers:
            await consumer.stop()
        for store in replicas:
            store.close()


@pytest.mark.dialect_free
async def test_a_void_takes_back_the_figures_a_verification_added(rig):
    history = programme_history()
    activity = uuid.uuid4()
    volunteer = history.others[2]
    steps = [history.activity(activity, volunteer, 1, "submitted", hours=6.0),
             history.activity(activity, volunteer, 2, "verified", hours=6.0, approved=4.0),
             history.activity(activity, volunteer, 3, "voided", hours=6.0, approved=4.0)]
    base = history.events[:3]  # the organisation, programme and project
    keys = random.Random(0)

    async def publish_step(type_: str, payload) -> None:
        await publish(rig.settings, rig.topics, records_of(rig.topics, [new_event(type_, activity, payload)], keys))

    await publish(rig.settings, rig.topics, records_of(rig.topics, base, keys))
    await publish_step(ACTIVITY_SUBMITTED, steps[0])
    await publish_step(ACTIVITY_VERIFIED, steps[1])
    await eventually(lambda: figures(rig.store, history.project)["verified_hours"] == 4.0, 20, what="the verification counted")
    await publish_step(ACTIVITY_VOIDED, steps[2])
    await eventually(lambda: figures(rig.store, history.project) == {"verified_hours": 0, "verified_activities": 0,
                                                                    "volunteers": 0}, 20, what="the void taking it back")
    # An old revision delivered again (an outbox re-publish of a new event id) cannot bring it back.
    await publish_step(ACTIVITY_VERIFIED, steps[1])
    await eventually(lambda: processed(rig.store, rig.topics.consumer).get("applied") == 7, 20, what="the replay applied")
    assert figures(rig.store, history.project)["verified_hours"] == 0
    assert rig.store.query("SELECT status, revision FROM activity WHERE id = $1", [activity]) == [("voided", 3)]


@pytest.mark.dialect_free
async def test_a_merge_counts_the_duplicates_activities_for_the_survivor_whenever_they_arrive(rig):
    history = programme_history()
    keys = random.Random(1)
    survivor, duplicate = history.survivor, history.duplicate
    early, late = uuid.uuid4(), uuid.uuid4()
    registered = [new_event(VOLUNTEER_REGISTERED, v, VolunteerChanged(
        id=v, organization_id=history.org, sex=sex, date_of_birth=history.events[0].time.date().replace(year=2000),
        residence_province="12")) for v, sex in ((survivor, "female"), (duplicate, "male"))]
    before = [new_event(ACTIVITY_VERIFIED, early, history.activity(early, duplicate, 2, "verified", approved=2.0)),
              new_event(ACTIVITY_VERIFIED, uuid.uuid4(), history.activity(uuid.uuid4(), survivor, 2, "verified", approved=1.0))]
    merged = new_event(VOLUNTEER_MERGED, duplicate, VolunteerMerged(survivor_id=survivor, duplicate_id=duplicate))
    # An activity still naming the duplicate arrives after the merge (its reassignment not yet).
    after = new_event(ACTIVITY_VERIFIED, late, history.activity(late, duplicate, 2, "verified", approved=3.0))
    await publish(rig.settings, rig.topics, records_of(rig.topics, [*history.events[:3], *registered, *before], keys))
    await eventually(lambda: figures(rig.store, history.project)["volunteers"] == 2, 20, what="two volunteers before the merge")

    await publish(rig.settings, rig.topics, records_of(rig.topics, [merged, after], keys))
    await eventually(lambda: figures(rig.store, history.project) == {"verified_hours": 6.0, "verified_activities": 3,
                                                                    "volunteers": 1}, 20, what="one volunteer after the merge")
    # The duplicate's activities take the survivor's attributes (sex, age, residence).
    assert rig.store.query("SELECT DISTINCT sex FROM activity_facts WHERE project_id = $1", [history.project]) == [("female",)]


@pytest.mark.dialect_free
async def test_poison_messages_are_dead_lettered_and_the_figures_go_on(rig):
    history = programme_history()
    keys = random.Random(2)
    not_an_event = b"{not json"
    broken = orjson.loads(history.events[0].to_bytes())
    broken["id"] = str(uuid.uuid4())
    broken["data"]["kind"] = None  # breaks the payload's schema
    records = [(rig.topics.registry, b"k1", not_an_event), (rig.topics.registry, b"k1", orjson.dumps(broken)),
               *records_of(rig.topics, history.events, keys)]
    await publish(rig.settings, rig.topics, records)

    await eventually(lambda: processed(rig.store, rig.topics.consumer).get("applied") == len(history.events), 30,
                     what="the good events applied past the poison")
    dead = await find_events(rig.settings.kafka_bootstrap, dead_letter_topic(rig.topics.consumer), lambda e: True, count=2)
    assert sorted(d["topic"] for d in dead) == [rig.topics.registry] * 2
    assert {d["value"] for d in dead} == {not_an_event.decode(), orjson.dumps(broken).decode()}
    assert all(d["error"] for d in dead)
    assert rig.consumer.dead_lettered == 2
    # The event with an id is recorded as dead-lettered, so a replay does not dead-letter it again.
    assert processed(rig.store, rig.topics.consumer)["dead_letter"] == 1
    assert figures(rig.store, history.project)["verified_hours"] == 3.5


# ---- the running service ------------------------------------------------------------------------
async def test_ready_and_metrics_show_lag_freshness_and_dead_letters(stack, admin: httpx.AsyncClient):
    created = await admin.post("/organizations", json={"name": f"ngo-{uuid.uuid4().hex[:8]}", "kind": "ngo",
                                                        "province_codes": ["12"]})
    assert created.status_code == 201
    async with httpx.AsyncClient(base_url=stack.urls["analytics"], timeout=30) as analytics:
        async def fresh() -> bool:
            body = (await analytics.get("/ready")).json()
            return body["store"]["as_of"] is not None and body["consumers"]["analytics"]["lag"] != {}
        await eventually(fresh, 20, what="analytics /ready reporting its consumer and store")
        body = (await analytics.get("/ready")).json()
        consumer = body["consumers"]["analytics"]
        assert all(isinstance(lag, int) and lag >= 0 for lag in consumer["lag"].values())
        assert set(consumer["lag"]) <= {f"{t}/{p}" for t in ("vmc.registry.v1", "vmc.activities.v1") for p in range(3)}
        assert consumer["dead_lettered"] == 0
        assert 0 <= body["store"]["as_of_age_s"] < 3600
        samples = {s.name: s for family in text_string_to_metric_families((await analytics.get("/metrics")).text)
                   for s in family.samples}
        assert 0 <= samples["vmc_analytics_as_of_age_seconds"].value < 3600
        assert "vmc_dead_letters_total" in samples and "vmc_consumer_lag" in samples


async def test_through_the_gateway_a_void_takes_back_the_hours_its_verification_added(admin: httpx.AsyncClient):
    place = await setting(admin)
    logged = await log(admin, activity_body(place, hours=3.0))
    assert logged.status_code == 201, logged.text
    activity = logged.json()["id"]

    async def verified_hours_are(expected: float | None) -> bool:
        return await organisation_hours(admin, place.org["id"], group_by="project") == expected

    assert (await admin.post(f"/activities/{activity}/verify", json={"approved_hours": 2.0})).status_code == 200
    await eventually(lambda: verified_hours_are(2.0), 30, what="the verified hours counted")
    assert (await admin.post(f"/activities/{activity}/void", json={"reason": "logged twice"})).status_code == 200
    await eventually(lambda: verified_hours_are(None), 30, what="the void taking the hours back")


# ---- denormalised rows: the same whatever the order and batching ----------------------------------
def denormalisation_history() -> tuple[Programme, dict[str, uuid.UUID]]:
    """Activities of volunteers whose registration, update, merges (a chain: A into B, B into S) and
    erasure the store may hear of before or after them, and a programme created after its activities."""
    p = Programme()
    v = {name: uuid.uuid4() for name in ("A", "B", "S", "late", "erased")}
    p.add(ORGANIZATION_CREATED, OrganizationChanged(id=p.org, kind="ngo", province_codes=["12"]))
    p.add(PROJECT_CREATED, ProjectChanged(id=p.project, program_id=p.program, organization_id=p.org))
    for name, sex, year in (("A", "male", 2001), ("B", "other", 2002), ("S", "female", 2012), ("late", "male", 1990),
                            ("erased", "female", 2000)):
        p.add(VOLUNTEER_REGISTERED, VolunteerChanged(id=v[name], organization_id=p.org, sex=sex,
                                                     date_of_birth=date(year, 3, 2), residence_province="12"))
    for i, name in enumerate(("A", "A", "B", "S", "late", "erased")):
        activity = uuid.uuid4()
        p.add(ACTIVITY_VERIFIED, p.activity(activity, v[name], 2, "verified", hours=2.0 + i, approved=1.0 + i))
    p.add(VOLUNTEER_MERGED, VolunteerMerged(survivor_id=v["B"], duplicate_id=v["A"]))
    p.add(VOLUNTEER_MERGED, VolunteerMerged(survivor_id=v["S"], duplicate_id=v["B"]))
    # The survivor's date of birth corrected: 15 on the activity date (1 March 2026, her birthday), not 13.
    p.add(VOLUNTEER_UPDATED, VolunteerChanged(id=v["S"], organization_id=p.org, sex="female",
                                              date_of_birth=date(2011, 3, 1), residence_province="17",
                                              residence_commune="170205"))
    p.add(VOLUNTEER_ERASED, VolunteerErased(id=v["erased"]))
    p.add(PROGRAM_CREATED, ProgramCreated(id=p.program, code="LATE-1"))
    return p, v


async def apply_in_batches(events: list, rng: random.Random) -> AnalyticsStore:
    """The events applied through the store's batch unit in random-sized batches, in the order given."""
    store = AnalyticsStore(MEMORY)
    units = StoreBatches(store)
    at = 0
    while at < len(events):
        size = rng.randint(1, 4)
        await units.apply("test", [(e, e.payload()) for e in events[at:at + size]], HANDLERS)
        at += size
    return store


def denormalised(store: AnalyticsStore) -> list[tuple]:
    return store.query("""SELECT sex, age_band, residence_province, residence_district, program, approved_hours,
                                 survivor_id FROM activity ORDER BY approved_hours""")


@pytest.mark.dialect_free
@pytest.mark.parametrize("seed", range(4))
async def test_denormalised_rows_converge_whatever_the_order(seed):
    history, v = denormalisation_history()
    in_order = await apply_in_batches(history.events, random.Random(seed))
    shuffled = list(history.events)
    random.Random(seed).shuffle(shuffled)
    stores = [in_order, await apply_in_batches(shuffled, random.Random(seed + 100))]
    try:
        # Everything A, B and S did counts for S, with S's corrected attributes: a girl of 15 (15-17) living
        # in district 1702 of 17; the others keep their own; the programme's code reached the rows before it.
        expected = [("female", "15-17", "17", "1702", "LATE-1", 1.0 + i, v["S"]) for i in range(4)] + [
            ("male", "31+", "12", None, "LATE-1", 5.0, v["late"]),
            ("female", "25-30", "12", None, "LATE-1", 6.0, v["erased"])]
        for store in stores:
            assert denormalised(store) == expected
            # Keys follow the survivor; the summary holds S's 10 verified hours and the others'.
            assert store.query("SELECT count(*) FROM activity a JOIN volunteer s ON s.key = a.volunteer_key "
                               "WHERE s.id <> a.survivor_id") == [(0,)]
            assert store.query("SELECT survivor_id, sum(hours) FROM volunteer_summary GROUP BY 1 ORDER BY 2") == [
                (v["late"], 5.0), (v["erased"], 6.0), (v["S"], 10.0)]
            # Kept on write, the derived rows equal those derived from scratch from the stored entities.
            kept = store.contents()
            store.write(rederive)
            assert store.contents() == kept
        assert stores[0].contents() == stores[1].contents()
    finally:
        for store in stores:
            store.close()


async def test_through_the_gateway_volunteers_are_counted_distinct_not_per_activity(admin: httpx.AsyncClient):
    place = await setting(admin)
    other = await register(admin, organization_id=place.org["id"])
    await create_enrollment(admin, other["id"], place.project["id"])
    for body in (activity_body(place, hours=1.0), activity_body(place, hours=2.0),
                 activity_body(place, volunteer_id=other["id"], hours=4.0)):
        assert (await log(admin, body)).status_code == 201

    async def cells(group_by: str) -> list[tuple]:
        answer = await admin.get("/analytics/hours", params={"organization": place.org["id"], "group_by": group_by,
                                                             "status": "all"})
        if answer.status_code == 404:  # the organisation's own event is not in the store yet
            return []
        assert answer.status_code == 200, answer.text
        return [(row["activities"], row["volunteers"], row["hours"]) for row in answer.json()["rows"]]

    async def all_counted() -> bool:
        return await cells("project") == [(3, 2, 7.0)]

    # Three activities, two volunteers: one row however it is cut (few groups: a bitmap per group;
    # many possible groups: count(DISTINCT)).
    await eventually(all_counted, 30, what="the three activities counted")
    assert await cells("day,activity_type") == [(3, 2, 7.0)]
    assert await cells("province,district,focus_area,organization,project,program,sex,age_band") == [(3, 2, 7.0)]
    # CSV has no place for as_of: it comes as Last-Modified (to the second), as with JSON.
    params = {"organization": place.org["id"], "group_by": "project"}
    as_json = await admin.get("/analytics/hours", params=params)
    as_csv = await admin.get("/analytics/hours", params=params, headers={"Accept": "text/csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    as_of = datetime.fromisoformat(as_json.json()["as_of"]).replace(microsecond=0)
    assert parsedate_to_datetime(as_csv.headers["last-modified"]) == parsedate_to_datetime(
        as_json.headers["last-modified"]) == as_of


# ---- design 3: the rollups answer as the activity rows do ------------------------------------------
def mixed_history(seed: int) -> tuple[Programme, uuid.UUID, uuid.UUID]:
    """Two organisations (B below A), two programmes, three projects; volunteers registered, updated,
    merged (a chain) and erased; activities over several months, types and places, submitted, corrected,
    verified in part, rejected, voided and reassigned: every change the rollups must take back or move.
    Returns the history, organisation B and one project of A."""
    rng = random.Random(seed)
    p = Programme()
    orgs = [p.org, uuid.uuid4()]
    p.add(ORGANIZATION_CREATED, OrganizationChanged(id=orgs[0], kind="ngo", province_codes=["12"]))
    p.add(ORGANIZATION_CREATED, OrganizationChanged(id=orgs[1], parent_id=orgs[0], kind="ngo", province_codes=["17"]))
    programs = [p.program, uuid.uuid4()]
    projects = [(p.project, programs[0], orgs[0]), (uuid.uuid4(), programs[1], orgs[0]), (uuid.uuid4(), programs[0], orgs[1])]
    for project, program, org in projects:
        p.add(PROJECT_CREATED, ProjectChanged(id=project, program_id=program, organization_id=org))
    people = [uuid.uuid4() for _ in range(12)]
    for i, person in enumerate(people):
        p.add(VOLUNTEER_REGISTERED, VolunteerChanged(
            id=person, organization_id=orgs[i % 2], sex=("female", "male", "other")[i % 3],
            date_of_birth=date(1998 + i, 1 + i % 12, 1 + i), residence_province=("12", "17")[i % 2],
            residence_commune=("120101", "170205", None)[i % 3] if i % 2 == 0 else None))
    types = (("teaching", "education"), ("tree_planting", "environment"), ("first_aid", "health"))
    for n in range(60):
        activity, person = uuid.uuid4(), rng.choice(people)
        project, program, org = rng.choice(projects)
        kind, focus = rng.choice(types)

        def state(revision: int, status: str, hours: float, approved: float | None, volunteer=person) -> ActivityChanged:
            return ActivityChanged(
                id=activity, volunteer_id=volunteer, project_id=project, program_id=program, organization_id=org,
                activity_type=kind, focus_area=focus, date=date(2026, 1 + n % 5, 1 + n % 28), hours=hours,
                approved_hours=approved, location_code=("120101", "1701", "17")[n % 3],
                beneficiaries=Beneficiaries(female=n % 3, male=n % 2, children=n % 4), status=status, version=1,
                revision=revision)
        hours = 0.25 * rng.randint(1, 24)
        p.add(ACTIVITY_SUBMITTED, state(1, "submitted", hours, None))
        fate = n % 6
        if fate == 1:
            p.add(ACTIVITY_CORRECTED, state(2, "submitted", hours + 1, None))
        elif fate == 2:
            p.add(ACTIVITY_VERIFIED, state(2, "verified", hours, hours))
        elif fate == 3:
            p.add(ACTIVITY_VERIFIED, state(2, "verified", hours, hours / 2))  # approved in part
        elif fate == 4:
            p.add(ACTIVITY_REJECTED, state(2, "rejected", hours, None))
        elif fate == 5:
            p.add(ACTIVITY_VERIFIED, state(2, "verified", hours, hours))
            if n % 4 == 1:
                p.add(ACTIVITY_VOIDED, state(3, "voided", hours, hours))
            else:
                p.add(ACTIVITY_REASSIGNED, state(3, "verified", hours, hours, volunteer=rng.choice(people)))
    # Assessments of two instruments: baselines and endlines, a second baseline (the earliest counts), a
    # replacement, items missing on one side, and assessed volunteers merged below.
    for i, person in enumerate(people[:9]):
        for instrument in ("soft-v1", "digital-v1")[:1 + i % 2]:
            phases = [("baseline", date(2026, 1, 5 + i)), ("endline", date(2026, 5, 5 + i))]
            if i % 4 == 1:
                phases.append(("baseline", date(2026, 2, 1)))
            for phase, taken_on in phases:
                scores = {"teamwork": rng.randint(1, 5), "communication": rng.randint(1, 5),
                          **({"leadership": rng.randint(1, 5)} if (i + len(phase)) % 3 else {})}
                recorded = AssessmentChanged(id=uuid.uuid4(), volunteer_id=person, instrument=instrument, phase=phase,
                                             taken_on=taken_on, scores=scores, total=sum(scores.values()))
                p.add(ASSESSMENT_RECORDED, recorded)
                if i % 3 == 2 and phase == "endline":
                    p.add(ASSESSMENT_REPLACED, recorded.model_copy(update={
                        "id": uuid.uuid4(), "replaces": recorded.id, "total": recorded.total + 2,
                        "scores": {**scores, "teamwork": scores["teamwork"] + 2}}))
    p.add(VOLUNTEER_MERGED, VolunteerMerged(survivor_id=people[1], duplicate_id=people[0]))
    p.add(VOLUNTEER_MERGED, VolunteerMerged(survivor_id=people[2], duplicate_id=people[1]))
    p.add(VOLUNTEER_UPDATED, VolunteerChanged(id=people[2], organization_id=orgs[0], sex="male",
                                              date_of_birth=date(2011, 3, 1), residence_province="17",
                                              residence_commune="170205"))
    p.add(VOLUNTEER_ERASED, VolunteerErased(id=people[5]))
    # The second programme's code holds a quote and a NUL character: the cells of its rows are looked up by
    # a key written out as SQL constants (quoted), or, where that cannot be, by a join.
    for program, odd in zip(programs, ("", "'\x00")):
        p.add(PROGRAM_CREATED, ProgramCreated(id=program, code=f"P-{program.hex[:6]}{odd}"))
    return p, orgs[1], projects[0][0]


def rollup_questions(organization: uuid.UUID, project: uuid.UUID) -> list[tuple[str, list[tuple[str, str]], str | None]]:
    """(report, query, tree root) of the dashboards and other questions the rollups cover."""
    org = str(organization)
    return [
        ("hours", [("group_by", "province,month")], None),
        ("volunteers", [("group_by", "province,sex,age_band")], None),
        ("hours", [("group_by", "activity_type,quarter")], None),
        ("hours", [("group_by", "province,program")], None),
        ("volunteers", [("group_by", "project"), ("organization", org)], None),
        ("overview", [], None),
        ("overview", [("group_by", "year")], None),
        ("hours", [("group_by", "province,month"), ("status", "all")], None),
        ("hours", [("group_by", "month"), ("from", "2026-02-01"), ("to", "2026-03-31")], None),
        ("hours", [("group_by", "focus_area,activity_type"), ("quarter", "2026-Q1")], None),
        ("hours", [("group_by", "province"), ("month", "2026-02,2026-04")], None),
        ("beneficiaries", [("group_by", "program"), ("province", "17")], None),
        ("volunteers", [("group_by", "sex"), ("age_band", "15-17,25-30")], None),
        ("volunteers", [("group_by", "age_band,province")], None),
        ("hours", [("group_by", "organization,project,program")], None),
        ("hours", [("group_by", "project"), ("project", str(project))], None),
        ("volunteers", [("group_by", "organization,year")], None),
        ("hours", [("group_by", "project")], org),  # a key seeing B's tree only
        ("hours", [("group_by", "month"), ("to", "2026-03-31")], org),
        ("overview", [], org),
    ]


def same_answers(store: AnalyticsStore, question) -> tuple:
    """`question` answered from the cells and from the activity rows, without and (when it groups) with
    the slice totals, one dimension fewer: the same each time. The cells' answers, without and with."""
    from_cells = []
    for totals in (False, True) if question.group_by else (False,):
        answers = []
        for rollups in (True, False):
            statement, rows = store.query_keyed(lambda keys: figures_sql(question, totals, keys, rollups))
            answers.append(figures_of(question, statement.columns, rows))
        assert answers[0].rows == answers[1].rows, (question, totals)
        assert answers[0].slice_totals == answers[1].slice_totals, (question, totals)
        from_cells.append(answers[0])
    return from_cells[0], from_cells[-1]


# The chunks of volunteer keys the cells are kept in (store.CHUNK_BITS): at 4,096 every key of this
# history is in chunk 0; at 2 its volunteers spread over many chunks, and a merge moves one to another.
@pytest.mark.dialect_free
@pytest.mark.parametrize("chunk_bits", [4096, 2])
@pytest.mark.parametrize("seed", range(3))
async def test_the_rollups_answer_as_the_activity_rows_do(seed, chunk_bits, monkeypatch):
    monkeypatch.setattr(projections, "CHUNK_BITS", chunk_bits)
    history, organization, project = mixed_history(seed)
    shuffled = list(history.events)
    random.Random(seed).shuffle(shuffled)
    store = await apply_in_batches(shuffled, random.Random(seed + 7))
    try:
        assert store.query("SELECT count(*) FROM activity WHERE status IN ('verified', 'submitted')")[0][0] > 30
        whole = []
        for report, params, root in rollup_questions(organization, project):
            caller = CallerContext("k", uuid.UUID(root) if root else uuid.uuid4(), frozenset(), national=root is None)
            question = parse_question(REPORTS[report], params, caller)
            # Routed to a table of cells (a question the rollups cannot answer goes to the rows: below).
            assert rollup_for(question) is not None, (report, params)
            whole.append(totals_for(question))
            answer, with_totals = same_answers(store, question)
            # Something to compare: cells, or a total per slice when asked for.
            assert answer.rows or any(with_totals.slice_totals.values()) or not question.group_by, (report, params)
        # The dashboards' groups are rows of tables of totals (no bitmap read); a tree, status=all, a
        # filter of several values on a dimension not grouped, or a quarter filter on a yearly table are not.
        assert whole[:6] == ["totals_province_month", "totals_residence", "totals_type_quarter",
                             "totals_province_program", "totals_project", "totals_overall"], whole
        assert whole[6:8] == [None, None] and whole[-3:] == [None, None, None], whole
        # A month with no activity: no cell, and a grand total of 0 where the answer has one.
        for params in ([], [("group_by", "province")], [("group_by", "activity_type,focus_area")]):
            question = parse_question(REPORTS["hours"], [*params, ("from", "2020-01-01"), ("to", "2020-01-31")],
                                      CallerContext("k", uuid.uuid4(), national=True))
            assert rollup_for(question) is not None, params
            answer, _ = same_answers(store, question)
            assert not question.group_by or not answer.rows, params
        # Days, weeks, district, a date range not of whole months: the rows answer.
        for params in ([("group_by", "week")], [("group_by", "district,focus_area")], [("from", "2026-02-02")],
                       [("group_by", "province"), ("day", "2026-02-03")]):
            assert rollup_for(parse_question(REPORTS["hours"], params, CallerContext("k", uuid.uuid4(), national=True))) is None
        # One row per cell and chunk, found by its `cell` (a row its batch failed to find would be a second one).
        for name, cells in CELLS.items():
            assert store.query(f"""SELECT count(*), count(DISTINCT cell), count(*) FILTER (WHERE cell <> {cells.cell(name)})
                                   FROM {name}""")[0] == (*[store.query(f"SELECT count(*) FROM {name}")[0][0]] * 2, 0), name
        # One row of totals per group, status and chunk (a row its batch failed to delete would be a second one).
        for name, totals in TOTALS.items():
            key = ", ".join((*totals.dimensions, "status", "chunk"))
            assert store.query(f"SELECT count(*) - count(DISTINCT ({key})) FROM {name}") == [(0,)], name
        # Kept per batch, the rollups equal those derived from scratch.
        kept = store.contents()
        store.write(rederive)
        assert store.contents() == kept
    finally:
        store.close()


SKILLS_QUESTIONS = (
    [("group_by", "program,hours_band")], [("group_by", "hours_band")], [], [("group_by", "program,project")],
    [("group_by", "activity_type,sex")], [("group_by", "focus_area,age_band"), ("activity_type", "teaching")],
    [("group_by", "province,organization")], [("program", "{program}")], [("group_by", "project"), ("hours_band", "0-19")],
)


@pytest.mark.dialect_free
@pytest.mark.parametrize("seed", range(3))
async def test_the_skill_pairs_answer_as_the_summary_does(seed):
    """Skills read from the pairs kept on write (`skill_pair`: hours and activity links included) give the
    answer the summary gives, whatever order the assessments, replacements, merges and activities came in."""
    history, _, _ = mixed_history(seed)
    shuffled = list(history.events)
    random.Random(seed).shuffle(shuffled)
    store = await apply_in_batches(shuffled, random.Random(seed + 11))
    try:
        program = store.query("SELECT min(program) FROM activity WHERE status = 'verified'")[0][0]
        answered = routed = 0
        for instrument in ("soft-v1", "digital-v1"):
            for params in SKILLS_QUESTIONS:
                params = [(k, v.format(program=program)) for k, v in params] + [("instrument", instrument)]
                question = parse_question(REPORTS["skills"], params, CallerContext("k", uuid.uuid4(), national=True))
                for totals in (False, True) if question.group_by else (False,):
                    answers = []
                    for pairs in (True, False):
                        statement = skills_sql(question, totals, pairs)
                        # The whole programme × hours band answers come from the totals kept on write.
                        assert ("FROM skill_totals" in statement.sql) == (pairs and not totals and skill_totals_answer(question))
                        answers.append(figures_of(question, statement.columns, store.query(statement.sql, statement.params)))
                    routed += not totals and skill_totals_answer(question)
                    assert answers[0].rows == answers[1].rows, (params, totals)
                    assert answers[0].slice_totals == answers[1].slice_totals, (params, totals)
                    answered += sum(row.get("volunteers") or 0 for row in answers[0].rows)
        assert answered > 0 and routed == 4   # programme × hours band, and one programme, for each instrument
        # The merge chain's survivor holds one pair per instrument, with its duplicates' assessments.
        assert store.query("SELECT count(*) - count(DISTINCT (volunteer_id, instrument)) FROM skill_pair") == [(0,)]
        # Kept per batch, the skills totals equal those derived from scratch.
        kept = store.contents()["skill_totals"]
        assert kept and len(kept) == store.query("SELECT count(DISTINCT (instrument, program, hours_band, item)) FROM skill_totals")[0][0]
        store.write(rederive)
        assert store.contents()["skill_totals"] == kept
    finally:
        store.close()


@pytest.mark.dialect_free
def test_a_commit_does_not_checkpoint_the_store_each_time(tmp_path):
    """A live batch writes ~0.7 MB of log at 10 M activities but DuckDB's estimate of it passed the default
    16 MB threshold, so each commit rewrote the tables it touched (~1 s): the store raises the threshold."""
    store = AnalyticsStore(tmp_path / "analytics.duckdb")
    try:
        ((setting,),) = store.query("SELECT current_setting('checkpoint_threshold')")
        amount, unit = setting.split()
        assert unit == "MiB" and float(amount) >= 200, setting   # "244.1 MiB" (256 MB); DuckDB's default is 16
    finally:
        store.close()


@pytest.mark.dialect_free
async def test_the_serving_store_writes_in_a_thread_that_gives_way_to_the_answers(tmp_path):
    """The service's store runs DuckDB's statements on their calling threads and applies batches in a writer
    thread of lower CPU priority (a batch's scans then take the cores the answers leave); a rebuild's keeps
    DuckDB's threads."""
    serving, rebuilding = AnalyticsStore(tmp_path / "a.duckdb", serving=True), AnalyticsStore(tmp_path / "b.duckdb")
    try:
        assert serving.query("SELECT current_setting('threads')") == [(1,)]
        assert rebuilding.query("SELECT current_setting('threads')") == duckdb.connect().execute(
            "SELECT current_setting('threads')").fetchall()
        ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        writer = await serving.write_soon(lambda conn: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert writer == max(ours, WRITER_NICENESS) > 0
        assert await rebuilding.write_soon(lambda conn: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())) == ours
    finally:
        serving.close()
        rebuilding.close()


@pytest.mark.dialect_free
async def test_a_store_whose_rollups_are_of_an_earlier_shape_gets_them_made_again_on_opening(tmp_path):
    """A store written before the cells were kept in chunks of volunteer keys, or before each was found by
    its indexed `cell`, or before the skills totals or the totals per chunk, opens with those tables made again
    from its rows: the same figures, no rebuild from the log needed, and batches applied after find their cells."""
    history, _, _ = mixed_history(0)
    path = str(tmp_path / "analytics.duckdb")
    built = AnalyticsStore(path)
    try:
        units = StoreBatches(built)
        for at in range(0, len(history.events), 3):
            await units.apply("test", [(e, e.payload()) for e in history.events[at:at + 3]], HANDLERS)
        expected = built.contents()
        # The first shape: a dense bitmap per cell, no chunk.
        built.query("DROP TABLE cells_province_program")
        built.query("CREATE TABLE cells_province_program AS SELECT province, program, status, 0::BIGINT AS activities, "
                    "bitstring('0', 1024) AS volunteers FROM activity LIMIT 3")
        # The second: in chunks, without `cell`.
        built.query("DROP INDEX cells_residence_cell")
        built.query("ALTER TABLE cells_residence DROP COLUMN cell")
        # Before the skills totals were kept.
        assert expected["skill_totals"]
        built.query("DROP TABLE skill_totals")
        # Totals of one row per group, without chunks.
        built.query("DROP TABLE totals_province_month")
        built.query("CREATE TABLE totals_province_month AS SELECT province, month, status, 0::BIGINT AS activities "
                    "FROM activity LIMIT 3")
    finally:
        built.close()
    reopened = AnalyticsStore(path)
    try:
        for name in ("cells_province_program", "cells_residence"):
            assert {"chunk", "cell"} <= {c for (c,) in reopened.query(
                "SELECT column_name FROM information_schema.columns WHERE table_name = $1", [name])}
        assert reopened.contents() == expected
        # What the batches add afterwards lands in the cells found by their `cell`, as in a store kept from the start.
        more, _, _ = mixed_history(1)
        units = StoreBatches(reopened)
        for at in range(0, len(more.events), 5):
            await units.apply("test", [(e, e.payload()) for e in more.events[at:at + 5]], HANDLERS)
        kept = reopened.contents()
        reopened.write(rederive)
        assert reopened.contents() == kept
    finally:
        reopened.close()


# ---- the upkeep apart: two writers on one store -----------------------------------------------------
@pytest.mark.dialect_free
@pytest.mark.parametrize("seed", range(2))
async def test_batches_committing_while_the_upkeep_is_in_its_transaction_give_the_in_order_figures(seed, tmp_path, monkeypatch):
    """The service's pair of writers on one store: the consumer's transactions store rows and note them, the
    upkeep's (`Upkeep`, its own thread and cursor) brings the derived tables up to them. In turns: each upkeep
    transaction is held open, its work done, until a consumer batch has committed beside it, and each batch
    waits for an upkeep transaction to be so held; the next upkeep transaction must take that batch from
    where the held one leaves the tables. At the end every table, derived ones included, equals the store
    built event by event in order, and the derived tables equal those computed from scratch."""
    monkeypatch.setattr(projections, "CHUNK_BITS", 2)   # volunteers over many chunks; merges move them
    history, _, _ = mixed_history(seed)
    delivered = shuffled_with_duplicates(history.events, seed, duplicates=10)
    committed = threading.Condition()
    holding = threading.Event()
    batches, overlapped, finished = [0], [0], [False]
    real_catch_up = projections.catch_up

    def held_open(conn):
        taken = real_catch_up(conn)
        with committed:
            seen = batches[0]
            holding.set()
            # Wait (bounded) for a consumer batch to commit while this transaction, its work done, is still open.
            if committed.wait_for(lambda: batches[0] > seen or finished[0], timeout=10) and batches[0] > seen:
                overlapped[0] += 1
        return taken

    monkeypatch.setattr(projections, "catch_up", held_open)
    store = AnalyticsStore(tmp_path / "analytics.duckdb", serving=True)
    failures: list[Exception] = []
    upkeep = projections.Upkeep(store, on_error=failures.append)
    try:
        units, rng, at = StoreBatches(store, upkeep), random.Random(seed + 5), 0
        while at < len(delivered):
            size = rng.randint(1, 5)
            await asyncio.to_thread(holding.wait, 10)   # an upkeep transaction open (bounded: the assertion below counts)
            holding.clear()
            await units.apply("test", [(e, e.payload()) for e in delivered[at:at + size]], HANDLERS)
            at += size
            with committed:
                batches[0] += 1
                committed.notify_all()
        with committed:
            finished[0] = True
            committed.notify_all()
        await eventually(lambda: store.query("SELECT (SELECT count(*) FROM pending_activity) "
                                             "+ (SELECT count(*) FROM pending_survivor)") == [(0,)],
                         30, what="every batch taken in by the upkeep")
        upkeep.close()
        assert not failures, failures   # no conflict between the two writers' transactions
        assert overlapped[0] >= batches[0] - 2, (overlapped, batches)   # the interleaving this test is about happened
        expected = await apply_in_order(history.events)
        try:
            assert store.contents() == expected.contents()
        finally:
            expected.close()
        # The derived tables as kept through the interleaved transactions equal those computed from the rows.
        kept = store.contents()
        store.write(rederive)
        assert store.contents() == kept
        assert store.query("SELECT as_of FROM store_state WHERE name = 'derived'") == \
            store.query("SELECT as_of FROM store_state WHERE name = 'events'")
    finally:
        upkeep.close()
        store.close()
