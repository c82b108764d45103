"""What a caller may see in the registry: its organisation's subtree, or everything if national."""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends

from services.registry.organizations.repository import subtree_ids
from shared.caller import Caller, CallerContext
from shared.service import SessionDep


class Visibility:
    """The caller's reach. `orgs` is None for a national key (no restriction)."""

    def __init__(self, caller: CallerContext, orgs: set[uuid.UUID] | None):
        self.caller = caller
        self.orgs = orgs

    def can_see(self, org_id: uuid.UUID | None) -> bool:
        return self.orgs is None or org_id in self.orgs

    def can_manage(self, org_id: uuid.UUID | None) -> bool:
        """Changes need the organisation to be in the caller's own subtree, even for national keys."""
        return self.caller.national or org_id in (self.orgs or ())


async def visibility(caller: Caller, session: SessionDep) -> Visibility:
    if caller.national:
        return Visibility(caller, None)
    return Visibility(caller, await subtree_ids(session, caller.organization_id))


VisibilityDep = Annotated[Visibility, Depends(visibility)]
