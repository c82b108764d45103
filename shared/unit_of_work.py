"""The unit of work: one transaction per request or per consumed batch, committed once, by its owner only."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

# session.info keys: present while a unit of work owns the session, True only during the owner's commit;
# what to do once the work is stored.
_OWNER_COMMITS = "unit_of_work_commits"
_AFTER_COMMIT = "unit_of_work_after_commit"


@asynccontextmanager
async def unit_of_work(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session whose work is committed when the block ends normally and rolled back on any error.

    The code inside (endpoint, service, event handler, helper) never commits: a forgotten commit
    cannot lose a write, and a commit in the middle cannot store half a change (it raises, see
    below). A rule that must undo part of its work uses `session.begin_nested()`.
    """
    async with maker() as session:
        session.info[_OWNER_COMMITS] = False
        # An exception from the block leaves here without a commit: closing the session rolls back.
        yield session
        session.info[_OWNER_COMMITS] = True
        await session.commit()
        for callback in session.info.pop(_AFTER_COMMIT, ()):
            callback()


def after_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Run `callback` once the unit of work owning `session` has committed (never if it rolls back):
    for a cache that must not be cleared while a concurrent reader can still load the old rows."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


@event.listens_for(Session, "before_commit")
def _refuse_commit_inside_unit_of_work(session: Session) -> None:
    # Releasing a savepoint also fires before_commit; only a commit of the whole transaction is refused.
    if session.info.get(_OWNER_COMMITS) is False and not session.in_nested_transaction():
        raise RuntimeError("this session belongs to a unit of work, which commits once at its end: "
                           "do not commit here (use session.begin_nested() to undo part of the work)")
