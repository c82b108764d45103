"""Unit tests of shared.caller: the gateway-signed caller context (signature, expiry, tampering, scopes)."""
from __future__ import annotations

import base64
import uuid

import httpx
import orjson
import pytest
from fastapi import FastAPI

from shared.caller import (
    CALLER_HEADER,
    CONTEXT_TTL_SECONDS,
    SIGNATURE_HEADER,
    CallerContext,
    _sign,
    decode_caller,
    encode_caller,
    require_scope,
)
from shared.errors import ProblemError, install_error_handlers

SECRET = "unit-test-internal-secret"
NOW = 1_800_000_000  # a whole second, so the expiry boundary is exact


def caller(scopes: tuple[str, ...] = ("registry:read",), national: bool = False) -> CallerContext:
    return CallerContext(key_id="key-1", organization_id=uuid.uuid4(), scopes=frozenset(scopes), national=national)


def signed(ctx: CallerContext, secret: str = SECRET, now: float = NOW) -> tuple[str, str]:
    headers = encode_caller(ctx, secret, now=now)
    return headers[CALLER_HEADER], headers[SIGNATURE_HEADER]


def resigned(claims: dict, secret: str = SECRET) -> tuple[str, str]:
    """A context with arbitrary claims, correctly signed (what only a holder of the secret can make)."""
    value = base64.urlsafe_b64encode(orjson.dumps(claims))
    return value.decode(), _sign(secret, value)


def claims_of(value: str) -> dict:
    return orjson.loads(base64.urlsafe_b64decode(value))


def rejected(value: str | None, signature: str | None, now: float = NOW) -> ProblemError:
    with pytest.raises(ProblemError) as raised:
        decode_caller(value, signature, SECRET, now=now)
    assert raised.value.status == 401
    return raised.value


# ---- round trip -------------------------------------------------------------------------------
@pytest.mark.parametrize("national", [False, True])
def test_signed_context_decodes_to_the_same_caller(national: bool):
    original = caller(("registry:read", "registry:write", "admin"), national=national)
    assert decode_caller(*signed(original), SECRET, now=NOW) == original


def test_context_carries_an_expiry_ttl_seconds_after_signing():
    value, _ = signed(caller())
    assert claims_of(value)["exp"] == NOW + CONTEXT_TTL_SECONDS


# ---- expiry -----------------------------------------------------------------------------------
def test_context_is_accepted_until_its_expiry_second():
    decoded = decode_caller(*signed(caller()), SECRET, now=NOW + CONTEXT_TTL_SECONDS)
    assert decoded.key_id == "key-1"


def test_expired_context_is_refused():
    error = rejected(*signed(caller()), now=NOW + CONTEXT_TTL_SECONDS + 1)
    assert error.detail == "the caller context has expired"


def test_an_hour_old_captured_header_cannot_be_replayed():
    error = rejected(*signed(caller(), now=NOW - 3600))
    assert "expired" in error.detail


# ---- signature and tampering ------------------------------------------------------------------
@pytest.mark.parametrize("value, signature", [(None, "abc"), ("abc", None), ("", ""), (None, None)])
def test_missing_headers_mean_the_request_did_not_come_through_the_gateway(value, signature):
    error = rejected(value, signature)
    assert error.detail == "requests must come through the gateway"


def test_context_signed_with_another_secret_is_refused():
    error = rejected(*signed(caller(), secret="someone-elses-secret"))
    assert error.detail == "the caller context is not signed by the gateway"


def test_widening_scopes_in_a_captured_context_breaks_the_signature():
    value, signature = signed(caller(("registry:read",)))
    claims = claims_of(value)
    claims["s"] = ["admin", "registry:read", "registry:write"]
    forged = base64.urlsafe_b64encode(orjson.dumps(claims)).decode()
    assert rejected(forged, signature).detail == "the caller context is not signed by the gateway"


@pytest.mark.parametrize("claim, forged", [("n", True), ("o", str(uuid.uuid4())), ("exp", NOW + 10**6)])
def test_changing_any_claim_breaks_the_signature(claim, forged):
    value, signature = signed(caller())
    claims = claims_of(value) | {claim: forged}
    tampered = base64.urlsafe_b64encode(orjson.dumps(claims)).decode()
    assert rejected(tampered, signature).detail == "the caller context is not signed by the gateway"


def test_tampered_signature_is_refused():
    value, signature = signed(caller())
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert rejected(value, flipped).detail == "the caller context is not signed by the gateway"


@pytest.mark.parametrize(
    "claims",
    [
        {"k": "key-1", "o": "not-a-uuid", "s": [], "n": False, "exp": NOW + 60},
        {"k": "key-1", "s": [], "n": False, "exp": NOW + 60},  # no organisation
        {"k": "key-1", "o": str(uuid.uuid4()), "s": [], "n": False},  # no expiry
        {"k": "key-1", "o": str(uuid.uuid4()), "s": [], "n": False, "exp": "soon"},
    ],
)
def test_signed_but_malformed_context_is_a_401_not_a_500(claims):
    assert rejected(*resigned(claims)).detail == "malformed caller context"


def test_signed_garbage_is_a_401_not_a_500():
    value = base64.urlsafe_b64encode(b"\xff not json")
    assert rejected(value.decode(), _sign(SECRET, value)).detail == "malformed caller context"


# ---- scopes -----------------------------------------------------------------------------------
def test_require_raises_403_naming_the_missing_scope():
    ctx = caller(("registry:read",))
    assert ctx.has("registry:read") and not ctx.has("registry:write")
    ctx.require("registry:read")
    with pytest.raises(ProblemError) as raised:
        ctx.require("registry:write")
    assert raised.value.status == 403 and "registry:write" in raised.value.detail


def scoped_app() -> FastAPI:
    app = FastAPI()
    app.state.settings = type("Settings", (), {"internal_secret": SECRET})()
    install_error_handlers(app)

    @app.get("/write", dependencies=[require_scope("registry:write")])
    async def write() -> dict:
        return {"ok": True}

    return app


# Headers are made when the test runs: contexts signed at collection time expire (60 s) before a
# whole-suite run reaches the unit tests.
@pytest.mark.parametrize(
    "headers, status",
    [
        (lambda: {}, 401),
        (lambda: encode_caller(caller(("registry:read",)), SECRET), 403),
        (lambda: encode_caller(caller(("registry:write",)), "wrong-secret"), 401),
        (lambda: encode_caller(caller(("registry:write",)), SECRET), 200),
    ],
    ids=["no-context", "missing-scope", "forged", "allowed"],
)
async def test_require_scope_guards_a_route(headers, status):
    transport = httpx.ASGITransport(app=scoped_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        response = await client.get("/write", headers=headers())
    assert response.status_code == status, response.text
    if status != 200:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
