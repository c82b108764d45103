"""Times on the wire are RFC 3339; the databases compare and store them in UTC."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime


def as_utc(moment: datetime) -> datetime:
    """Times without an offset are taken as UTC (the wire format is RFC 3339 UTC).

    Raises ValueError for a time that has no UTC equivalent (year 9999 at -14:00 is past year 9999).
    """
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError as exc:
        raise ValueError("time out of range") from exc


# A time in a query or a body, in UTC once validated: a time with no UTC equivalent is a 422 naming
# the parameter, not an error from the database driver when it converts it.
UtcTime = Annotated[datetime, AfterValidator(as_utc)]
AwareUtcTime = Annotated[AwareDatetime, AfterValidator(as_utc)]  # the same, but an offset is required
