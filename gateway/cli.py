"""`vmc keys create | list | revoke`: manage API keys straight in the gateway's database; `vmc migrate`,
`vmc topics` and `vmc serve PART`: the production steps and parts (deploy/production.py).

Works against the embedded default (SQLite `VMC_DATA_DIR/gateway.db`) and production
(`VMC_GATEWAY_DATABASE_URL`). It hashes keys with the same `VMC_INTERNAL_SECRET` as the running
gateway; when that variable is unset it reads `VMC_DATA_DIR/internal-secret`, where the embedded
launcher keeps it. A running gateway sees a change within its key cache time (2 s by default).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Sequence
from datetime import datetime

import orjson
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from gateway.audit import CLI_ACTOR, add_key_change
from gateway.keys import ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, create_key
from gateway.migrations import MIGRATIONS
from gateway.settings import GatewaySettings
from shared.caller import SCOPES
from shared.db import make_engine, make_sessionmaker, migrate, utcnow


class CliError(Exception):
    """A message for the user; exit code 1 (2 for bad arguments, as argparse does)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def load_settings() -> GatewaySettings:
    settings = GatewaySettings()
    if "VMC_INTERNAL_SECRET" not in os.environ:
        stored = settings.data_dir / "internal-secret"
        if stored.exists():
            settings = GatewaySettings(internal_secret=stored.read_text().strip())
    return settings


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="vmc", description="VMC Connect administration")
    groups = top.add_subparsers(dest="group", required=True)
    keys = groups.add_parser("keys", help="API keys").add_subparsers(dest="command", required=True)

    create = keys.add_parser("create", help="create a key; it is printed this once")
    create.add_argument("--name", required=True)
    create.add_argument("--organization-id", required=True, help="the organisation the key belongs to (UUID)")
    create.add_argument("--scope", action="append", required=True, dest="scopes", choices=SCOPES,
                        help="repeat for several scopes")
    create.add_argument("--national", action="store_true", help="may read across organisations")
    create.add_argument("--rate-limit", type=int, dest="rate_limit_per_minute", help="requests a minute (default: the gateway's)")
    create.add_argument("--expires-at", help="RFC 3339 time with a zone, e.g. 2027-01-01T00:00:00Z")
    create.add_argument("--json", action="store_true", help="print JSON")

    listing = keys.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--organization-id", help="only this organisation's keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.add_argument("--json", action="store_true", help="print JSON lines")

    revoke = keys.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key", help="the key's id (UUID) or its prefix")

    parts = ["registry", "activities", "analytics", "gateway"]
    migrate_cmd = groups.add_parser("migrate", help="apply every part's pending migrations (safe to repeat, "
                                    "and to run from several places at once)")
    migrate_cmd.add_argument("--part", action="append", dest="parts", choices=parts, help="only this part (repeatable)")
    topics = groups.add_parser("topics", help="create the event and dead-letter topics that do not exist yet")
    topics.add_argument("--partitions", type=int, required=True, help="per topic: the most consumer replicas that work")
    topics.add_argument("--replication-factor", type=int, required=True, help="copies of each partition (3 in production)")
    topics.add_argument("--retention-ms", type=int, default=-1, help="-1 (default): for ever, so analytics can rebuild")
    serve = groups.add_parser("serve", help="run one part on its VMC_<PART>_PORT (the container's command)")
    serve.add_argument("part", choices=parts)
    serve.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0: in a container)")
    return top


async def run(args: argparse.Namespace, settings: GatewaySettings) -> int:
    engine = make_engine(settings.resolved_database_url())
    try:
        await migrate(engine, MIGRATIONS)
        maker = make_sessionmaker(engine)
        async with maker() as session:
            if args.command == "create":
                return await _create(session, args, settings)
            if args.command == "list":
                return await _list(session, args)
            return await _revoke(session, args)
    finally:
        await engine.dispose()


async def _create(session, args, settings: GatewaySettings) -> int:
    try:
        data = ApiKeyCreate(
            name=args.name,
            organization_id=args.organization_id,
            scopes=args.scopes,
            national=args.national,
            rate_limit_per_minute=args.rate_limit_per_minute,
            expires_at=datetime.fromisoformat(args.expires_at) if args.expires_at else None,
        )
    except ValueError as exc:  # ValidationError is a ValueError; so is a malformed --expires-at
        raise CliError(_explain(exc), 2) from None
    row, key = await create_key(session, data, settings.internal_secret)
    add_key_change(session, None, CLI_ACTOR, "api_key.create", row.id, 201)
    await session.commit()
    created = ApiKeyCreated(**ApiKeyPublic.model_validate(row, from_attributes=True).model_dump(), key=key)
    if args.json:
        print(orjson.dumps(created.model_dump(mode="json")).decode())
    else:
        print(f"key:    {key}")
        print(f"id:     {row.id}")
        print(f"prefix: {row.prefix}")
        print("Store the key now: it is not shown again (only its hash is kept).", file=sys.stderr)
    return 0


async def _list(session, args) -> int:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if args.organization_id:
        query = query.where(ApiKey.organization_id == _uuid(args.organization_id, "--organization-id"))
    if not args.all:
        query = query.where(ApiKey.revoked_at.is_(None))
    rows = [ApiKeyPublic.model_validate(r, from_attributes=True) for r in (await session.execute(query)).scalars()]
    if args.json:
        for row in rows:
            print(orjson.dumps(row.model_dump(mode="json")).decode())
        return 0
    print(f"{'id':36}  {'prefix':8}  {'organization':36}  {'national':8}  {'limit/min':9}  {'expires':20}  {'revoked':20}  scopes / name")
    for r in rows:
        print(
            f"{r.id!s:36}  {r.prefix:8}  {r.organization_id!s:36}  {'yes' if r.national else 'no':8}  "
            f"{r.rate_limit_per_minute or '-'!s:9}  {_when(r.expires_at):20}  {_when(r.revoked_at):20}  "
            f"{','.join(r.scopes)} / {r.name}"
        )
    return 0


async def _revoke(session, args) -> int:
    try:
        query = select(ApiKey).where(ApiKey.id == uuid.UUID(args.key))
    except ValueError:
        query = select(ApiKey).where(ApiKey.prefix == args.key)
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        raise CliError(f"no API key with id or prefix {args.key!r}")
    if row.revoked_at is not None:
        print(f"already revoked at {_when(row.revoked_at)}: {row.id} ({row.prefix})")
        return 0
    row.revoked_at = row.updated_at = utcnow()
    add_key_change(session, None, CLI_ACTOR, "api_key.revoke", row.id, 204)
    await session.commit()
    print(f"revoked: {row.id} ({row.prefix}); running gateways refuse it within their key cache time")
    return 0


def _uuid(value: str, option: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CliError(f"{option}: not a UUID: {value!r}", 2) from None


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else "-"


def _explain(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        names = {"organization_id": "--organization-id", "scopes": "--scope", "rate_limit_per_minute": "--rate-limit",
                 "expires_at": "--expires-at", "name": "--name"}
        return "; ".join(f"{names.get(str(e['loc'][0]), e['loc'][0]) if e['loc'] else 'input'}: {e['msg']}" for e in exc.errors())
    return f"--expires-at: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.group in ("migrate", "topics", "serve"):
        return _production_step(args)
    try:
        settings = load_settings()
        return asyncio.run(run(args, settings))
    except CliError as exc:
        print(f"vmc: error: {exc}", file=sys.stderr)
        return exc.code
    except (OSError, ValueError, SQLAlchemyError) as exc:  # unreachable database, bad settings
        print(f"vmc: error: {exc}", file=sys.stderr)
        return 1


def _production_step(args: argparse.Namespace) -> int:
    # Imported here: the steps import every service's settings and migrations, `vmc keys` none of them.
    from deploy import production

    try:
        if args.group == "migrate":
            return production.migrate_all(args.parts)
        if args.group == "topics":
            if args.partitions < 1 or args.replication_factor < 1:
                raise CliError("--partitions and --replication-factor must be at least 1", 2)
            return production.create_topics(production.TopicPlan(args.partitions, args.replication_factor, args.retention_ms))
        return production.serve(args.part, args.host)
    except CliError as exc:
        print(f"vmc: error: {exc}", file=sys.stderr)
        return exc.code
    except (OSError, SQLAlchemyError, KafkaError) as exc:  # an unreachable database or broker
        print(f"vmc {args.group}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
