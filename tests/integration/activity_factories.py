"""Test data for the activities tests: a project with an enrolled volunteer, keys that may log, bodies."""
from __future__ import annotations

from dataclasses import dataclass

import httpx

from tests.factories import create_enrollment, create_org, create_project, register
from tests.harness import unique

LOGGER = ["registry:read", "registry:write", "activities:read", "activities:write"]


@dataclass
class Setting:
    """An organisation running a project (mid-January to the end of 2026) with one enrolled volunteer."""

    org: dict
    project: dict
    volunteer: dict


async def setting(admin: httpx.AsyncClient, **project) -> Setting:
    org = await create_org(admin)
    proj = await create_project(admin, org["id"], **project)
    volunteer = await register(admin, organization_id=org["id"])
    await create_enrollment(admin, volunteer["id"], proj["id"])
    return Setting(org, proj, volunteer)


def activity_body(s: Setting, **overrides) -> dict:
    return {
        "volunteer_id": s.volunteer["id"], "project_id": s.project["id"], "activity_type": "tree_planting",
        "date": "2026-03-10", "hours": 2.5, "location_code": "12",
        "beneficiaries": {"female": 4, "male": 3, "other": 0, "children": 2},
        "description": "Planted mangroves", "evidence_urls": ["https://example.org/photo/1.jpg"],
        "client_reference": unique("ref"), **overrides,
    }


async def log(client: httpx.AsyncClient, body: dict, **headers) -> httpx.Response:
    return await client.post("/activities", json=body, headers=headers)
