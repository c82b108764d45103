"""Small helpers for talking to the API in tests: walk every page of a list, check a problem answer."""
from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

MAX_PAGES = 1000  # far beyond any list a test session fills; a cursor that never ends fails instead of hanging


async def pages(client: httpx.AsyncClient, path: str, **params) -> AsyncIterator[list[dict]]:
    """The items of each page of a paginated list, in order (500 a page unless `limit` is given).

    Fails if a cursor comes back twice or the pages do not end: a paging bug must not hang the suite.
    """
    seen: set[str] = set()
    cursor = None
    for _ in range(MAX_PAGES):
        page = await client.get(path, params={"limit": 500, **params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, f"GET {path}: {page.status_code} {page.text[:300]}"
        body = page.json()
        yield body["items"]
        cursor = body["next_cursor"]
        if not cursor:
            return
        assert cursor not in seen, f"{path} answered the cursor {cursor} twice"
        seen.add(cursor)
    raise AssertionError(f"{path} still had a next page after {MAX_PAGES} pages")


async def walk(client: httpx.AsyncClient, path: str, **params) -> list[dict]:
    """Every item of a paginated list."""
    return [item async for page in pages(client, path, **params) for item in page]


def assert_problem(answer: httpx.Response, status: int, loc: list | None = None, says: str | None = None) -> dict:
    """The answer is a problem+json of `status`, naming `loc` among its errors and saying `says`."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json", answer.headers
    problem = answer.json()
    if loc is not None:
        assert loc in [e["loc"] for e in problem.get("errors") or []], problem
    if says is not None:
        assert says in answer.text, problem
    return problem
