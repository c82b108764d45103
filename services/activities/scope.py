"""What a caller may see of activities: those of its organisation's subtree (as the project's organisation
or the volunteer's), or everything if national. The tree comes from the registry projection."""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends

from services.activities.registry_view.repository import organization_parents
from shared.caller import Caller, CallerContext
from shared.service import SessionDep


class Visibility:
    """The caller's reach. `orgs` is None for a national key (no restriction)."""

    def __init__(self, caller: CallerContext, orgs: set[uuid.UUID] | None):
        self.caller = caller
        self.orgs = orgs

    def can_see(self, row) -> bool:
        return self.orgs is None or row.organization_id in self.orgs or row.volunteer_organization_id in self.orgs


def subtree(parents: dict[uuid.UUID, uuid.UUID | None], root: uuid.UUID) -> set[uuid.UUID]:
    children: dict[uuid.UUID, list[uuid.UUID]] = {}
    for org, parent in parents.items():
        if parent is not None:
            children.setdefault(parent, []).append(org)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


async def visibility(caller: Caller, session: SessionDep) -> Visibility:
    if caller.national:
        return Visibility(caller, None)
    return Visibility(caller, subtree(await organization_parents(session), caller.organization_id))


VisibilityDep = Annotated[Visibility, Depends(visibility)]
