"""The analytics benchmark's pure parts: the synthetic history is valid events of the catalogue with the
skew asked for, the rebuild's summary line is read, caught-up is judged from /ready, the table's columns."""
import random
from collections import Counter
from datetime import date

import orjson
import pytest

from bench import analytics
from bench.stats import figure, pivot
from shared.events import ACTIVITIES_TOPIC, REGISTRY_TOPIC, parse_event

TODAY = date(2026, 12, 2)


def history(volunteers: int = 200, activities: int = 3000, seed: int = 7):
    rng = random.Random(seed)
    people = analytics.volunteers(volunteers, rng)
    return people, (list(analytics.registry_events(people, rng)), list(analytics.assessment_events(people, TODAY, rng)),
                    list(analytics.activity_events(people, activities, TODAY, rng, chunk=700)))


def test_every_synthetic_event_is_a_valid_event_of_its_topic():
    _, (registry, assessments, activities) = history()
    assert len(registry) == analytics.ORGANIZATIONS + analytics.PROGRAMS + analytics.PROJECTS + 200
    assert len(activities) == 3000  # the chunks add up to the count asked for
    for topic, value in registry + assessments + activities:
        event = parse_event(value)
        event.payload()  # raises if the data is not the type's payload
        assert topic == (REGISTRY_TOPIC if event.type.startswith(("vmc.organization", "vmc.program", "vmc.project", "vmc.volunteer"))
                         else ACTIVITIES_TOPIC)
    # The rebuild's bulk path recognises activity events by how the envelope starts.
    assert all(b'"type":"vmc.activity.' in value for _, value in activities)


def test_the_history_is_the_same_for_a_seed_and_skewed_as_asked():
    people, (_, _, activities) = history(volunteers=500, activities=20_000)
    again, (_, _, repeated) = history(volunteers=500, activities=20_000)
    assert people == again
    assert [orjson.loads(v)["data"] for _, v in activities[:50]] == [orjson.loads(v)["data"] for _, v in repeated[:50]]
    data = [orjson.loads(v)["data"] for _, v in activities]
    statuses = Counter(d["status"] for d in data)
    assert 0.87 < statuses["verified"] / len(data) < 0.93 and statuses["rejected"] > 0 and statuses["submitted"] > 0
    assert all((d["approved_hours"] is not None) == (d["status"] == "verified") for d in data)
    provinces = Counter(p.province for p in people)
    assert provinces["01"] > 5 * provinces["25"]  # residence skewed over the provinces
    homes = {analytics.entity_id(4, v): p for v, p in enumerate(people)}
    at_home = sum(d["location_code"][:2] == homes[d["volunteer_id"]].province for d in data)
    assert at_home / len(data) > 0.88  # 90 % where the volunteer lives, plus chance
    per_volunteer = sorted(Counter(d["volunteer_id"] for d in data).values(), reverse=True)
    assert sum(per_volunteer[:50]) > 0.25 * len(data)  # a tenth of the volunteers log over a quarter
    assert all((TODAY - date.fromisoformat(d["date"])).days in range(1, 3 * 365 + 1) for d in data)


def test_a_project_and_its_activities_belong_to_one_organisation():
    _, (registry, _, activities) = history()
    owner = {}
    for _, value in registry:
        event = orjson.loads(value)
        if event["type"] == "vmc.project.created":
            owner[event["data"]["id"]] = event["data"]["organization_id"]
    assert len(set(owner.values())) == analytics.ORGANIZATIONS
    assert all(owner[d["project_id"]] == d["organization_id"] for d in (orjson.loads(v)["data"] for _, v in activities))


def test_assessed_volunteers_have_a_baseline_and_an_endline():
    people, (_, assessments, _) = history(volunteers=1000)
    phases = Counter((d["volunteer_id"], d["phase"]) for d in (orjson.loads(v)["data"] for _, v in assessments))
    volunteers = {v for v, _ in phases}
    assert 0.25 < len(volunteers) / len(people) < 0.35
    assert all(phases[(v, "baseline")] == phases[(v, "endline")] == 1 for v in volunteers)


def test_zipf_weights_are_cumulative_and_falling():
    weights = analytics.zipf_weights(4, 1.0)
    steps = [b - a for a, b in zip([0.0, *weights], weights)]
    assert steps == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4])


def test_the_rebuild_summary_is_its_last_done_line():
    output = ("replaying: 50,000 events, 41,000 events/s, 1.2 s (vmc.activities.v1/0 50000/1000000)\n"
              "done: 1,000,250 events, 38,512 events/s, 26.0 s (vmc.activities.v1/0 1000000/1000000)\n")
    assert analytics.rebuild_summary(output) == (1_000_250, 38_512, 26.0)
    with pytest.raises(RuntimeError, match="no final line"):
        analytics.rebuild_summary("replaying: 5 events, 5 events/s, 1.0 s ()\n")


@pytest.mark.parametrize(("lag", "expected"), [
    ({}, False),  # nothing fetched yet
    ({"vmc.registry.v1/0": 0}, False),  # the activities topic not reached
    ({"vmc.registry.v1/0": 0, "vmc.activities.v1/0": 0, "vmc.activities.v1/1": 12}, True),
    ({"vmc.registry.v1/0": 0, "vmc.activities.v1/0": 90_000}, False),
])
def test_caught_up_needs_every_partition_near_its_end(lag, expected):
    assert analytics.caught_up({"consumers": {"analytics": {"lag": lag, "dead_lettered": 0}}}) is expected


def test_writes_are_paced_and_never_break_the_24_hour_rule():
    assert [analytics.paced_start(i, 200) for i in (0, 1, 200)] == [0, 0.005, 1.0]
    setup = analytics.Setup("r1", TODAY, "o", "p", "j", [f"v{i}" for i in range(analytics.SIZES["1m"].setup_volunteers)])
    templates = analytics.write_templates(setup)
    bodies = [orjson.loads(t.replace("{n}", "1")) for t in templates]
    days = Counter((b["volunteer_id"], b["date"]) for b in bodies)
    assert len(days) == len(templates)  # each volunteer-day once in a turn of the templates
    # Ten minutes at the target rate: every volunteer-day well under 24 hours, and none on the probes' day.
    turns = -(-analytics.WRITE_RATE * 600 // len(templates))
    assert turns * max(b["hours"] for b in bodies) <= 24
    probe_day = (TODAY.toordinal() - analytics.PROBE_DAY)
    assert all(date.fromisoformat(b["date"]).toordinal() != probe_day for b in bodies)


def test_the_table_columns_come_in_order_whatever_order_the_figures_came():
    figures = {figure("q", analytics.PROBE): 1, figure("q", analytics.P99): 2, figure("q", analytics.P50): 3,
               figure("rebuild", analytics.VALUE): 4, figure("rebuild", analytics.TARGET): 5}
    rows, columns, _ = pivot("analytics", analytics.in_columns(figures))
    assert rows == ["q", "rebuild"]
    assert columns == [analytics.P50, analytics.P99, analytics.PROBE, analytics.TARGET, analytics.VALUE]
