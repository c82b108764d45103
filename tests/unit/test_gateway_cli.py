"""`vmc keys`: create prints the key once, list never shows it, revoke marks it; all audited."""
from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import select

from gateway.audit import AuditEvent
from gateway.cli import main
from gateway.keys import ApiKey, hash_secret
from shared.db import make_engine, make_sessionmaker

ORG = "6a0c8c2e-9a61-4d3c-8d1e-3f1f2d4b5a60"


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VMC_DATA_DIR", str(tmp_path))
    for name in ("VMC_INTERNAL_SECRET", "VMC_GATEWAY_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "internal-secret").write_text("secret-of-the-embedded-launcher\n")
    return tmp_path


def rows(data_dir, model):
    async def fetch():
        engine = make_engine(f"sqlite+aiosqlite:///{data_dir / 'gateway.db'}")
        try:
            async with make_sessionmaker(engine)() as session:
                return list((await session.execute(select(model))).scalars())
        finally:
            await engine.dispose()

    return asyncio.run(fetch())


def test_create_list_revoke(data_dir, capsys):
    assert main(["keys", "create", "--name", "partner app", "--organization-id", ORG, "--scope", "registry:read",
                 "--scope", "activities:write", "--rate-limit", "120", "--expires-at", "2030-01-01T00:00:00Z", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    key = created["key"]
    assert key.startswith(f"vmc_{created['prefix']}_")
    assert created["scopes"] == ["activities:write", "registry:read"] and created["rate_limit_per_minute"] == 120

    (stored,) = rows(data_dir, ApiKey)
    # Hashed with the secret the launcher keeps in VMC_DATA_DIR/internal-secret, as the gateway does.
    assert stored.key_hash == hash_secret(key, "secret-of-the-embedded-launcher")
    assert key not in stored.key_hash

    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert created["prefix"] in listing and created["id"] in listing and key not in listing

    assert main(["keys", "revoke", created["prefix"]]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "list", "--json"]) == 0
    assert capsys.readouterr().out.strip() == ""  # revoked keys are hidden unless --all
    assert main(["keys", "list", "--all", "--json"]) == 0
    (listed,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed["revoked_at"] is not None and "key" not in listed and "key_hash" not in listed

    audit = sorted(rows(data_dir, AuditEvent), key=lambda e: e.at)
    assert [(e.action, e.actor_prefix, e.object) for e in audit] == [
        ("api_key.create", "cli", f"api-keys/{created['id']}"),
        ("api_key.revoke", "cli", f"api-keys/{created['id']}"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--organization-id", "not-a-uuid", "--scope", "admin"], "--organization-id"),
        (["--organization-id", ORG, "--scope", "admin", "--expires-at", "2030-01-01T00:00:00"], "--expires-at"),
        (["--organization-id", ORG, "--scope", "admin", "--expires-at", "next year"], "--expires-at"),
        (["--organization-id", ORG, "--scope", "admin", "--expires-at", "2020-01-01T00:00:00Z"], "--expires-at"),
        (["--organization-id", ORG, "--scope", "admin", "--expires-at", "9999-12-31T23:59:59-23:59"], "--expires-at"),
        (["--organization-id", ORG, "--scope", "admin", "--rate-limit", "0"], "--rate-limit"),
    ],
)
def test_bad_input_says_which_option(data_dir, capsys, args, message):
    assert main(["keys", "create", "--name", "x", *args]) == 2
    assert message in capsys.readouterr().err
    assert rows(data_dir, ApiKey) == []


def test_revoking_an_unknown_key_fails(data_dir, capsys):
    assert main(["keys", "revoke", "deadbeef"]) == 1
    assert "no API key" in capsys.readouterr().err
