"""Pure rules about a volunteer as a person: age at registration, consent, plausible dates.

No I/O: the API service and the CSV importer both call these, and unit tests pin them down. Every
function returns a list of `{loc, msg}` errors whose `loc` is the wire path inside a volunteer body
(`["consent", "guardian_name"]`); callers prefix it (`body`) or map it to a CSV column.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

# Cambodia has one time zone and no daylight saving time: a fixed offset needs no tz database.
PHNOM_PENH = timezone(timedelta(hours=7), "Asia/Phnom_Penh")
MINIMUM_AGE = 10  # adolescents take part from 10 (AYRG); youth policy covers 15-30
ADULT_AGE = 18  # below it, a guardian's consent is recorded
OLDEST_PLAUSIBLE_AGE = 120
# Client clocks run ahead of ours by a little; a consent time that far in the future is a mistake.
CLOCK_SKEW = timedelta(minutes=5)


def local_today(now: datetime | None = None) -> date:
    """Today's date in Phnom Penh (the date a registration happens on)."""
    return (now or datetime.now(timezone.utc)).astimezone(PHNOM_PENH).date()


def local_date(moment: datetime) -> date:
    return moment.astimezone(PHNOM_PENH).date()


def age_on(born: date, on: date) -> int:
    """Completed years between `born` and `on` (a person born on 29 February turns a year older on 1 March)."""
    years = on.year - born.year
    if (on.month, on.day) < (born.month, born.day):
        years -= 1
    return years


@dataclass(frozen=True)
class PersonFacts:
    """What the rules look at; built from a create body, a PATCH merged onto a row, or a CSV row."""

    date_of_birth: date
    consent_given: bool
    consent_given_at: datetime | None
    guardian_name: str | None
    guardian_relation: str | None


def _error(loc: list[str | int], msg: str) -> dict:
    return {"loc": loc, "msg": msg}


def check_person(facts: PersonFacts, registered_on: date, now: datetime | None = None) -> list[dict]:
    """Errors of a volunteer registered on `registered_on` (today for a new one)."""
    now = now or datetime.now(timezone.utc)
    errors: list[dict] = []
    born = facts.date_of_birth
    today = local_today(now)
    if born > today:
        errors.append(_error(["date_of_birth"], "date of birth is in the future"))
    else:
        age = age_on(born, registered_on)
        if age < MINIMUM_AGE:
            errors.append(_error(
                ["date_of_birth"],
                f"a volunteer must be at least {MINIMUM_AGE} years old at registration; "
                f"born {born.isoformat()} is {max(age, 0)} on {registered_on.isoformat()}",
            ))
        elif age > OLDEST_PLAUSIBLE_AGE:
            errors.append(_error(["date_of_birth"], f"implausible date of birth: older than {OLDEST_PLAUSIBLE_AGE} years"))
        elif age < ADULT_AGE:
            # Under 18 the consent is the guardian's: who gave it must be on record.
            if not facts.guardian_name:
                errors.append(_error(["consent", "guardian_name"], f"required for a volunteer under {ADULT_AGE}"))
            if not facts.guardian_relation:
                errors.append(_error(["consent", "guardian_relation"], f"required for a volunteer under {ADULT_AGE}"))
    if not facts.consent_given:
        errors.append(_error(["consent", "given"], "consent must be given before personal data is registered"))
    if facts.consent_given_at is not None:
        if facts.consent_given_at > now + CLOCK_SKEW:
            errors.append(_error(["consent", "given_at"], "consent time is in the future"))
        elif local_date(facts.consent_given_at) < born:
            errors.append(_error(["consent", "given_at"], "consent time is before the date of birth"))
    return errors


def is_plausible_email(value: str) -> bool:
    """A shape check, not a deliverability check: one @, a local part, a dotted domain, no spaces."""
    if len(value) > 254 or any(ch.isspace() for ch in value):
        return False
    local, at, domain = value.rpartition("@")
    if not at or not local or "@" in local or len(local) > 64:
        return False
    labels = domain.split(".")
    return len(labels) >= 2 and all(labels) and all(not label.startswith("-") and not label.endswith("-") for label in labels)
