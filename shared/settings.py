"""Settings common to every process, read from the environment (pydantic-settings)."""
from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-only-internal-secret-change-me"


def _common(name: str, default, **kw):
    """A field read from `VMC_<NAME>` whatever the service prefix is (one broker, one secret)."""
    return Field(default, validation_alias=AliasChoices(f"VMC_{name.upper()}"), **kw)


class CommonSettings(BaseSettings):
    """What every service and the gateway share. Subclasses set their own env prefix."""

    model_config = SettingsConfigDict(env_prefix="VMC_", extra="ignore", populate_by_name=True)

    environment: str = _common("environment", "development")
    data_dir: Path = _common("data_dir", Path("var"))
    kafka_bootstrap: str = _common("kafka_bootstrap", "127.0.0.1:9092")
    # Tansu rejects idempotent producers; Apache Kafka wants them (the production default).
    kafka_idempotence: bool = _common("kafka_idempotence", False)
    kafka_acks: str = _common("kafka_acks", "all")
    # Tansu makes a joining consumer wait about half of this, and a member of generation 0 never
    # leaves its group on close (aiokafka sends no LeaveGroup then): a restarted consumer resumes
    # only after the old member's session expired. Tests shorten it; 10 s suits production.
    kafka_session_timeout_ms: int = _common("kafka_session_timeout_ms", 10_000)
    # Set by the embedded launcher each time it starts a broker whose storage is empty: a new epoch
    # makes every service re-publish its retained outbox so nothing the broker lost stays lost.
    broker_epoch: str = _common("broker_epoch", "")
    internal_secret: str = _common("internal_secret", DEV_SECRET)
    log_level: str = _common("log_level", "INFO")
    consumer_max_retries: int = _common("consumer_max_retries", 3)
    # How long the outbox relay waits after a commit wakes it, gathering the commits right behind
    # into the same batch. Measured at one client registering (README, "Events"): 20 ms cut the
    # machine's CPU per registration by about a third, for events 20 ms later.
    outbox_linger_ms: float = _common("outbox_linger_ms", 20.0, ge=0, le=1000)

    @model_validator(mode="after")
    def _refuse_default_secret(self):
        if self.environment != "development" and self.internal_secret == DEV_SECRET:
            raise ValueError("VMC_INTERNAL_SECRET must be set outside development")
        return self


class ServiceSettings(CommonSettings):
    """A service with a database and a port; `name` fixes the env prefix (`VMC_REGISTRY_...`)."""

    name: str = "service"
    port: int = 8001
    database_url: str = ""
    database_pool_size: int = 10  # PostgreSQL connections kept per process (+5 overflow)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{self.name}.db').resolve()}"

