"""Which upstream service owns which public path (the gateway knows services only by URL)."""
from __future__ import annotations

from gateway.settings import GatewaySettings

API_PREFIX = "/api/v1/"

# First path segment after /api/v1/ → service name.
OWNERS = {
    "locations": "registry",
    "organizations": "registry",
    "programs": "registry",
    "projects": "registry",
    "volunteers": "registry",
    "enrollments": "registry",
    "activity-types": "activities",
    "activities": "activities",
    "assessment-instruments": "activities",
    "assessments": "activities",
    "analytics": "analytics",
}


def upstream_urls(settings: GatewaySettings) -> dict[str, str]:
    return {
        "registry": settings.registry_url.rstrip("/"),
        "activities": settings.activities_url.rstrip("/"),
        "analytics": settings.analytics_url.rstrip("/"),
    }


def owner_of(path: str) -> str | None:
    if not path.startswith(API_PREFIX):
        return None
    segment = path[len(API_PREFIX):].split("/", 1)[0]
    return OWNERS.get(segment)
