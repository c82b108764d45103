"""Property-based attack on the merged OpenAPI document (schemathesis): every operation, valid and
invalid inputs, with a national admin key. No answer may be a 5xx, and every answer must match what
the document says that operation returns (status code and body schema).

Bounded: a few examples per operation, generated deterministically, so the run is repeatable and
takes well under a minute; raise VMC_SCHEMATHESIS_EXAMPLES to explore more. The engine is driven
directly (schemathesis' pytest plugin does not support pytest 9 yet).
"""
from __future__ import annotations

import os
import re
import time

import httpx
import schemathesis
from schemathesis.engine import Status, events

from shared.caller import SCOPES
from tests.harness import Stack, unique

EXAMPLES = int(os.environ.get("VMC_SCHEMATHESIS_EXAMPLES", "10"))
# Not negative_data_rejection: times are parsed leniently on purpose (`updated_since=0.5` reads as a
# Unix time), which it counts as accepting invalid input.
CHECKS = ["not_a_server_error", "response_schema_conformance", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "use_after_free", "ensure_resource_availability"]


def fuzzing_key(stack: Stack) -> str:
    """A national admin key of its own, limited high enough that the run is never throttled."""
    with httpx.Client(base_url=stack.api, headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=30) as admin:
        gdy = admin.get("/organizations", params={"limit": 1}).json()["items"][0]["id"]
        created = admin.post("/admin/api-keys", json={"name": unique("schemathesis"), "organization_id": gdy,
                                                      "scopes": list(SCOPES), "national": True,
                                                      "rate_limit_per_minute": 1_000_000})
        assert created.status_code == 201, created.text
        return created.json()["key"]


# DELETE /volunteers/{id} is erasure (README, "The registry: rules partners rely on"): the record stays, read as 200 with `erased: true` and its
# enrolments, so a read after it is not a use after free. Every other DELETE is held to the check.
ERASURE = re.compile(r"deleted with `DELETE /api/v1/volunteers/[^/`]+`")


def erasure_read(check) -> bool:
    return check.name == "use_after_free" and bool(ERASURE.search(check.failure_info.failure.message))


def describe(event: events.ScenarioFinished, case_id: str, check) -> str:
    failure = check.failure_info.failure
    interaction = event.recorder.interactions.get(case_id)
    answer = ""
    if interaction is not None and interaction.response is not None:
        answer = f"\n  → {interaction.response.status_code} {interaction.response.content[:300]!r}"
    return (f"{event.recorder.label} [{event.phase}] {check.name}: {failure.title}: {failure.message[:300]}"
            f"\n  {check.failure_info.code_sample}{answer}")


def test_no_server_errors_and_answers_match_the_document(stack: Stack):
    schema = schemathesis.openapi.from_url(stack.api + "/openapi.json")
    assert not schema.raw_schema["info"].get("x-missing-services"), "the merged document misses services"
    config = schema.config
    config.update(base_url=stack.urls["gateway"], headers={"Authorization": f"Bearer {fuzzing_key(stack)}"})
    config.generation.update(max_examples=EXAMPLES, deterministic=True)
    config.phases.update(phases=["examples", "coverage", "fuzzing", "stateful"])
    config.checks.update(included_check_names=CHECKS)

    failures: list[str] = []
    tested: set[str] = set()
    started = time.monotonic()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            tested.add(event.recorder.label)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failures.append(describe(event, case_id, check))
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"engine error: {getattr(event, 'label', '')} {getattr(event, 'info', getattr(event, 'exception', ''))}")
        elif isinstance(event, events.EngineFinished):
            print(f"\nschemathesis: {len(tested)} operations in {time.monotonic() - started:.1f} s, stop: {event.stop_reason}")
    assert tested, "schemathesis tested no operation"
    unique_failures = sorted(set(failures))
    assert not unique_failures, f"{len(unique_failures)} failures:\n\n" + "\n\n".join(unique_failures[:40])
