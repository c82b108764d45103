"""Request bodies of the benchmarks: plausible, valid, and distinct per request (no duplicate flags); and
the rows the registry stores for them, for the ceilings (bench.ceiling)."""
from __future__ import annotations

import csv
import io
import json
import random
import uuid
from datetime import date, datetime, timedelta

from services.registry.normalize import normalize_name
from services.registry.settings import GDY_ORGANIZATION_ID
from services.registry.volunteers.models import Volunteer
from services.registry.volunteers.service import volunteer_event
from shared.events import VOLUNTEER_REGISTERED, CloudEvent

PROVINCES = [f"{code:02d}" for code in range(1, 26)]
SEXES = ["female", "male", "female", "male", "other", "undisclosed"]
EDUCATION = ["primary", "lower_secondary", "upper_secondary", "vocational", "higher"]
IMPORT_COLUMNS = [
    "name_latin", "name_km", "sex", "date_of_birth", "phone", "email", "residence_province", "residence_commune",
    "education_level", "disability", "organization_id", "consent_given", "consent_given_at", "guardian_name",
    "guardian_relation", "external_system", "external_id",
]


def volunteer_template(run: str) -> str:
    """A volunteer registration (an adult, so no guardian) whose `{n}` makes phone, email and name unique."""
    body = {
        "name_latin": f"Bench Volunteer {run} {{n}}",
        "sex": "female",
        "date_of_birth": "2001-04-17",
        "phone": "+8551{n}",
        "email": f"v{{n}}.{run}@bench.example.org",
        "residence_province": "12",
        "education_level": "upper_secondary",
        "disability": "no",
        "organization_id": GDY_ORGANIZATION_ID,
        "consent": {"given": True, "given_at": "2026-01-15T03:00:00Z"},
    }
    return json.dumps(body, ensure_ascii=False)


def registered_volunteers(run: str, first: int, count: int) -> tuple[list[dict], list[CloudEvent]]:
    """The volunteer rows and registration events the registry stores for `volunteer_template(run)` sent as
    requests `first` + 1 on (the external id table stays empty: the template has none)."""
    template = volunteer_template(run)
    rows = []
    for n in range(first + 1, first + 1 + count):
        body = json.loads(fill(template, n))
        rows.append(Volunteer.model_construct(  # the defaults without validation, as a plain row
            **{key: body[key] for key in ("name_latin", "sex", "phone", "email", "residence_province", "education_level", "disability")},
            name_latin_key=normalize_name(body["name_latin"]), date_of_birth=date.fromisoformat(body["date_of_birth"]),
            organization_id=uuid.UUID(body["organization_id"]), consent_given=body["consent"]["given"],
            consent_given_at=datetime.fromisoformat(body["consent"]["given_at"]),
        ).model_dump())
    return rows, [volunteer_event(VOLUNTEER_REGISTERED, row) for row in rows]


def organization_template(run: str) -> str:
    return json.dumps({"name": f"Bench NGO {run} {{n}}", "kind": "ngo", "province_codes": ["12"]})


def fill(template: str, n: int) -> str:
    """The body a load generator sends as request number `n`."""
    return template.replace("{n}", f"{n:08d}")


def volunteer_csv(rows: int, run: str, seed: int = 7) -> bytes:
    """A partner's import file: `rows` distinct volunteers, a fifth of them minors with a guardian."""
    rng = random.Random(seed)
    today = date.today()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(IMPORT_COLUMNS)
    for i in range(rows):
        minor = i % 5 == 0
        age_days = rng.randint(12 * 366, 16 * 366) if minor else rng.randint(19 * 366, 30 * 365)
        writer.writerow([
            f"Import Volunteer {run} {i:06d}",
            "សុខា" if i % 3 == 0 else "",
            rng.choice(SEXES),
            (today - timedelta(days=age_days)).isoformat(),
            f"0{rng.choice('1789')}{i:07d}",
            f"i{i}.{run}@bench.example.org" if i % 2 else "",
            rng.choice(PROVINCES),
            "",
            rng.choice(EDUCATION),
            rng.choice(["no", "no", "yes", "undisclosed"]),
            GDY_ORGANIZATION_ID,
            "true",
            "2026-01-15T03:00:00Z",
            "Chan Dara" if minor else "",
            "mother" if minor else "",
            "bench-partner",
            f"{run}-{i:06d}",
        ])
    return out.getvalue().encode()
