"""Which upstream service owns which public path (the gateway knows services only by URL)."""
from __future__ import annotations

from gateway.settings import GatewaySettings
from shared.manifest import API_PREFIX, ROUTE_OWNERS, SERVICES

_PREFIX = API_PREFIX + "/"


def upstream_urls(settings: GatewaySettings) -> dict[str, str]:
    """Service name → base URL, for every service of the manifest."""
    return {service.name: settings.url_of(service.name).rstrip("/") for service in SERVICES}


def owner_of(path: str) -> str | None:
    """The service serving a public path: by its first segment under /api/v1 (the manifest's route prefixes)."""
    if not path.startswith(_PREFIX):
        return None
    segment = path[len(_PREFIX):].split("/", 1)[0]
    return ROUTE_OWNERS.get(segment)
