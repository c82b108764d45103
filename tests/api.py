"""Small helpers for talking to the API in tests: walk every page of a list, check a problem answer."""
from __future__ import annotations

import httpx


async def walk(client: httpx.AsyncClient, path: str, **params) -> list[dict]:
    """Every item of a paginated list (500 a page unless `limit` is given)."""
    items, cursor = [], None
    while True:
        page = await client.get(path, params={"limit": 500, **params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if not cursor:
            return items


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
