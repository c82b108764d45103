"""The service manifest: one entry per service, read by the gateway, the launcher, the test harness and the catalogue.

Adding a service is a package under `services/` plus one `ServiceEntry` here: the gateway routes its
`route_prefixes` to `VMC_<NAME>_URL`, `make run` and the test harness start `app` on `VMC_<NAME>_PORT`,
its scopes join the API keys' scopes, its events get its CloudEvents `source`, its upload routes get
their body limit and its audited routes an entry in the audit trail (§6). Nothing here imports a
service's code (the gateway reads this module and must know services only by URL).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from shared import events

# Every public route is under this prefix; a service mounts its routers there.
API_PREFIX = "/api/v1"
MIB = 1024 * 1024


@dataclass(frozen=True)
class UploadRoute:
    """A route that takes a large non-JSON body (a CSV file), with its own size limit and media types."""

    path: str  # under API_PREFIX; a `{name}` segment matches any one segment
    limit: int = 50 * MIB
    media_types: tuple[str, ...] = ("text/csv", "multipart/form-data", "text/plain")


@dataclass(frozen=True)
class AuditedRoute:
    """A route every call of which the gateway's audit trail records (§6): personal data, exports."""

    method: str
    path: str  # under API_PREFIX; a `{name}` segment matches any one segment
    action: str  # e.g. "volunteer.read"; may use the path's `{name}` segments ("export.{format}")
    object: str  # what the entry names, e.g. "volunteers/{volunteer_id}" (ids and paths, never personal data)
    csv_only: bool = False  # recorded only when the client asks for CSV (`Accept: text/csv`): an export


@dataclass(frozen=True)
class ServiceEntry:
    name: str  # also fixes its settings' env prefix: VMC_<NAME>_PORT, VMC_<NAME>_URL, VMC_<NAME>_DATABASE_URL
    app: str  # import string of its app factory; only processes that run the service import it
    default_port: int
    route_prefixes: tuple[str, ...]  # first path segments under API_PREFIX it serves publicly ("/volunteers")
    scopes: tuple[str, ...] = ()  # API key scopes its routes check
    topic: str | None = None  # the topic it publishes on
    event_types: tuple[str, ...] = ()  # the catalogue's types it publishes (on `topic`)
    upload_routes: tuple[UploadRoute, ...] = ()
    audited_routes: tuple[AuditedRoute, ...] = ()

    @property
    def port_setting(self) -> str:
        return f"VMC_{self.name.upper()}_PORT"

    @property
    def url_setting(self) -> str:
        return f"VMC_{self.name.upper()}_URL"

    @property
    def source(self) -> str:
        """The CloudEvents `source` of its events."""
        return f"/{self.name}"


SERVICES: tuple[ServiceEntry, ...] = (
    ServiceEntry(
        name="registry",
        app="services.registry.app:create_app",
        default_port=8001,
        route_prefixes=("/locations", "/organizations", "/programs", "/projects", "/volunteers", "/enrollments"),
        scopes=("registry:read", "registry:write"),
        topic=events.REGISTRY_TOPIC,
        event_types=(
            events.ORGANIZATION_CREATED, events.ORGANIZATION_UPDATED, events.PROGRAM_CREATED,
            events.PROJECT_CREATED, events.PROJECT_UPDATED, events.VOLUNTEER_REGISTERED, events.VOLUNTEER_UPDATED,
            events.VOLUNTEER_ERASED, events.VOLUNTEER_MERGED, events.ENROLLMENT_STARTED, events.ENROLLMENT_ENDED,
            events.LOCATIONS_IMPORTED,
        ),
        upload_routes=(UploadRoute("/volunteers/import"), UploadRoute("/locations/import")),
        audited_routes=(
            AuditedRoute("GET", "/volunteers", "volunteer.list", "volunteers"),
            AuditedRoute("POST", "/volunteers", "volunteer.create", "volunteers"),
            AuditedRoute("GET", "/volunteers/duplicates", "volunteer.duplicates", "volunteers/duplicates"),
            AuditedRoute("POST", "/volunteers/import", "volunteer.import", "volunteers/import"),
            AuditedRoute("GET", "/volunteers/{id}", "volunteer.read", "volunteers/{id}"),
            AuditedRoute("PATCH", "/volunteers/{id}", "volunteer.update", "volunteers/{id}"),
            AuditedRoute("PUT", "/volunteers/{id}", "volunteer.update", "volunteers/{id}"),
            AuditedRoute("DELETE", "/volunteers/{id}", "volunteer.erase", "volunteers/{id}"),
            AuditedRoute("POST", "/volunteers/{id}/merge", "volunteer.merge", "volunteers/{id}"),
        ),
    ),
    ServiceEntry(
        name="activities",
        app="services.activities.app:create_app",
        default_port=8002,
        route_prefixes=("/activity-types", "/activities", "/assessment-instruments", "/assessments"),
        scopes=("activities:read", "activities:write", "activities:verify"),
        topic=events.ACTIVITIES_TOPIC,
        event_types=(
            events.ACTIVITY_SUBMITTED, events.ACTIVITY_CORRECTED, events.ACTIVITY_VERIFIED, events.ACTIVITY_REJECTED,
            events.ACTIVITY_VOIDED, events.ACTIVITY_REASSIGNED, events.ASSESSMENT_RECORDED, events.ASSESSMENT_REPLACED,
        ),
    ),
    ServiceEntry(
        name="analytics",
        app="services.analytics.app:create_app",
        default_port=8003,
        route_prefixes=("/analytics",),
        scopes=("analytics:read", "analytics:unsuppressed"),
        audited_routes=(
            AuditedRoute("GET", "/analytics/export/{format}", "export.{format}", "analytics/export/{format}"),
            AuditedRoute("GET", "/analytics/{figure}", "analytics.export", "analytics/{figure}", csv_only=True),
        ),
    ),
)

# Derived lookups, built once: the gateway consults them on every request.
ROUTE_OWNERS: dict[str, str] = {prefix.lstrip("/"): s.name for s in SERVICES for prefix in s.route_prefixes}
SOURCES: dict[str, str] = {s.topic: s.source for s in SERVICES if s.topic}


def path_pattern(template: str) -> re.Pattern[str]:
    """A route template as a pattern for `fullmatch`: a `{name}` segment is any one segment, captured as `name`."""
    return re.compile("/".join(f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part)
                               for part in template.split("/")))


_UPLOADS = [(API_PREFIX + route.path, route) for s in SERVICES for route in s.upload_routes]
_EXACT_UPLOADS = {path: route for path, route in _UPLOADS if "{" not in path}
_TEMPLATE_UPLOADS = [(path_pattern(path), route) for path, route in _UPLOADS if "{" in path]


def upload_route(path: str) -> UploadRoute | None:
    """The upload route a request path (with API_PREFIX) is, if it is one."""
    route = _EXACT_UPLOADS.get(path)  # the common case, on every request through the gateway
    if route is None and _TEMPLATE_UPLOADS:
        route = next((r for pattern, r in _TEMPLATE_UPLOADS if pattern.fullmatch(path)), None)
    return route

