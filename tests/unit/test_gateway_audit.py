"""Which proxied requests the audit trail records, and as what (never the personal data itself)."""
from __future__ import annotations

import pytest

from gateway.audit import classify

VID = "0b6f7a8e-2f7e-4c55-9a39-6f2f1a0f4b11"


def scope(accept: bytes = b"application/json") -> dict:
    return {"headers": [(b"accept", accept)]}


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api/v1/volunteers", ("volunteer.list", "volunteers")),
        ("POST", "/api/v1/volunteers", ("volunteer.create", "volunteers")),
        ("GET", f"/api/v1/volunteers/{VID}", ("volunteer.read", f"volunteers/{VID}")),
        ("PATCH", f"/api/v1/volunteers/{VID}", ("volunteer.update", f"volunteers/{VID}")),
        ("DELETE", f"/api/v1/volunteers/{VID}", ("volunteer.erase", f"volunteers/{VID}")),
        ("POST", f"/api/v1/volunteers/{VID}/merge", ("volunteer.merge", f"volunteers/{VID}")),
        ("GET", "/api/v1/volunteers/duplicates", ("volunteer.duplicates", "volunteers/duplicates")),
        ("POST", "/api/v1/volunteers/import", ("volunteer.import", "volunteers/import")),
        ("GET", "/api/v1/analytics/export/dhis2", ("export.dhis2", "analytics/export/dhis2")),
        ("GET", f"/api/v1/volunteers/{VID}/enrollments", None),
        ("GET", "/api/v1/organizations", None),
        ("GET", "/api/v1/analytics/hours", None),
    ],
)
def test_classify(method, path, expected):
    assert classify(method, path, scope()) == expected


def test_analytics_as_csv_is_an_export():
    assert classify("GET", "/api/v1/analytics/hours", scope(b"text/csv")) == ("analytics.export", "analytics/hours")
