"""The one pooled HTTP client to the registry's internal references route (made in the lifespan)."""
from __future__ import annotations

import logging
import uuid
from collections.abc import Collection

import httpx

from shared.caller import GDY_ORGANIZATION_ID, CallerContext, encode_caller

log = logging.getLogger(__name__)

# Who the activities service is when it asks: a service identity (the registry answers its internal
# route to `service:` keys only), national because it asks about any organisation's records.
SERVICE_CALLER = CallerContext(key_id="service:activities", organization_id=uuid.UUID(GDY_ORGANIZATION_ID),
                               scopes=frozenset({"registry:read"}), national=True)


class RegistryUnavailable(Exception):
    """The registry did not answer in time (down, slow, or answering errors)."""


class RegistryClient:
    def __init__(self, base_url: str, secret: str, timeout: float):
        self._secret = secret
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/api/v1",
            timeout=httpx.Timeout(timeout, connect=min(timeout, 0.5)),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        )

    async def references(self, volunteer_ids: Collection[uuid.UUID], project_ids: Collection[uuid.UUID],
                         location_codes: Collection[str]) -> dict:
        body = {"volunteer_ids": sorted(map(str, volunteer_ids)), "project_ids": sorted(map(str, project_ids)),
                "location_codes": sorted(location_codes)}
        try:
            answer = await self._http.post("/internal/references", json=body,
                                           headers=encode_caller(SERVICE_CALLER, self._secret))
        except httpx.HTTPError as exc:
            log.warning("registry unreachable", extra={"error": repr(exc)})
            raise RegistryUnavailable(str(exc)) from exc
        if answer.status_code != 200:
            log.warning("registry refused a references query", extra={"status": answer.status_code, "body": answer.text[:300]})
            raise RegistryUnavailable(f"registry answered {answer.status_code}")
        return answer.json()

    async def close(self) -> None:
        await self._http.aclose()
