"""Settings common to every process, read from the environment (pydantic-settings)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-only-internal-secret-change-me"


def _common(name: str, default, **kw):
    """A field read from `VMC_<NAME>` whatever the service prefix is (one broker, one secret)."""
    return Field(default, validation_alias=AliasChoices(f"VMC_{name.upper()}"), **kw)


class CommonSettings(BaseSettings):
    """What every service and the gateway share. Subclasses set their own env prefix."""

    model_config = SettingsConfigDict(env_prefix="VMC_", extra="ignore", populate_by_name=True)

    # production: Apache Kafka and PostgreSQL, every address given, no default secret, no migration
    # at start-up unless VMC_MIGRATE_ON_START says so (see `production_problem`).
    environment: Literal["development", "production"] = _common("environment", "development")
    data_dir: Path = _common("data_dir", Path("var"))
    kafka_bootstrap: str = _common("kafka_bootstrap", "127.0.0.1:9092")
    # Tansu rejects idempotent producers; Apache Kafka wants them (the production default).
    kafka_idempotence: bool = _common("kafka_idempotence", False)
    kafka_acks: Literal["all", "0", "1"] = _common("kafka_acks", "all")
    # Tansu makes a joining consumer wait about half of this, and a member of generation 0 never
    # leaves its group on close (aiokafka sends no LeaveGroup then): a restarted consumer resumes
    # only after the old member's session expired. Tests shorten it; 10 s suits production.
    kafka_session_timeout_ms: int = _common("kafka_session_timeout_ms", 10_000)
    # The longest a consumer's fetch waits at the broker for records. On Tansu a record produced while a
    # fetch waits is delivered late (at aiokafka's 500 ms an event reached an idle consumer 106 ms p50 /
    # 208 ms p99 after its ack, at 100 ms 2.3 / 6.5 ms; README, "Configuration"). Apache Kafka answers a
    # waiting fetch as soon as a record arrives; a shorter wait costs an idle consumer more empty fetches.
    kafka_fetch_max_wait_ms: int = _common("kafka_fetch_max_wait_ms", 100, ge=1, le=5_000)
    # Partitions of a topic a service creates (at start, and again after the broker lost its log):
    # the most consumer replicas of a group that get work. `vmc topics --partitions` in production.
    kafka_partitions: int = _common("kafka_partitions", 3, ge=1)
    internal_secret: str = _common("internal_secret", DEV_SECRET)
    log_level: str = _common("log_level", "INFO")
    consumer_max_retries: int = _common("consumer_max_retries", 3)
    # How long the outbox relay waits after a commit wakes it, gathering the commits right behind
    # into the same batch. Measured at one client registering (README, "Events"): 20 ms cut the
    # machine's CPU per registration by about a third, for events 20 ms later.
    outbox_linger_ms: float = _common("outbox_linger_ms", 20.0, ge=0, le=1000)
    # Published outbox rows are kept this long, then deleted: what a service can re-publish when the
    # broker lost its log (its consumers' history older than this is then gone from the topics).
    outbox_retention_hours: float = _common("outbox_retention_hours", 168.0, gt=0)

    @model_validator(mode="after")
    def _refuse_unsafe_production(self):
        problem = self.production_problem()
        if problem:
            raise ValueError(problem)
        return self

    def production_problem(self) -> str | None:
        """What makes these settings unfit to run, named by its variable (None when fit)."""
        if self.environment != "development" and self.internal_secret == DEV_SECRET:
            return "VMC_INTERNAL_SECRET must be set outside development"
        if self.environment != "production":
            return None
        if len(self.internal_secret) < 32:  # it signs every call into the services and hashes the API keys
            return "VMC_INTERNAL_SECRET must be at least 32 characters in production"
        if self.kafka_acks != "all" or not self.kafka_idempotence:
            # Apache Kafka: without idempotence a produce retried after a lost answer writes the
            # event twice, and without acks=all a broker's crash can lose an acknowledged one.
            name = "VMC_KAFKA_IDEMPOTENCE must be true" if not self.kafka_idempotence else "VMC_KAFKA_ACKS must be all"
            return f"{name} in production (Apache Kafka)"
        for name, field in type(self).model_fields.items():
            # A default pointing at this machine is the embedded default's, never a production address.
            if isinstance(field.default, str) and "127.0.0.1" in field.default and name not in self.model_fields_set:
                return f"{env_name(type(self), name)} must be set in production"
        return None


class ServiceSettings(CommonSettings):
    """A service with a database and a port; `name` fixes the env prefix (`VMC_REGISTRY_...`)."""

    name: str = "service"
    port: int = 8001
    database_url: str = ""
    database_pool_size: int = 10  # PostgreSQL connections kept per process (+5 overflow)
    # Apply pending migrations when the process starts. Unset: yes in development (`make run`, the
    # tests), no in production, where `vmc migrate` is a step of its own run once per release (a
    # part started on a database that step has not reached waits, unready, saying so).
    migrate_on_start: bool | None = _common("migrate_on_start", None)

    def production_problem(self) -> str | None:
        problem = super().production_problem()
        if problem or self.environment != "production":
            return problem
        if not self.database_url.startswith("postgresql+asyncpg://"):
            return f"{env_name(type(self), 'database_url')} must be a postgresql+asyncpg:// URL in production"
        return None

    @property
    def migrates_on_start(self) -> bool:
        return self.environment == "development" if self.migrate_on_start is None else self.migrate_on_start

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{self.name}.db').resolve()}"


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable a settings class reads a field from."""
    alias = cls.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def setting_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads."""
    return {env_name(cls, field) for field in cls.model_fields}


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], program: str, **values) -> S:
    """A process's settings; a missing, malformed or unsafe setting ends the process with one line
    on stderr naming the variable (exit code 1), not a stack trace."""
    try:
        return cls(**values)
    except ValidationError as exc:
        raise SystemExit(f"{program}: error: {explain(exc, cls)}") from None


def explain(exc: ValidationError, cls: type[BaseSettings]) -> str:
    """A settings error in one line, each problem named by its environment variable."""
    parts = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check of several fields: the message names the variable
            parts.append(message)
            continue
        field = str(error["loc"][0])
        name = env_name(cls, field) if field in cls.model_fields else field
        given = error.get("input")
        parts.append(f"{name}: {message}" + (f" (got {given!r})" if isinstance(given, str) and "SECRET" not in name
                                             and "KEY" not in name and "URL" not in name else ""))
    return "; ".join(parts)
