"""Gateway settings (`VMC_GATEWAY_*`, plus the common `VMC_*`)."""
from __future__ import annotations

from pydantic import AliasChoices, Field, create_model
from pydantic_settings import SettingsConfigDict

from shared.manifest import SERVICES
from shared.settings import ServiceSettings

# One `<service>_url` field per service of the manifest, read from its `VMC_<NAME>_URL`.
_ServiceUrls = create_model(
    "_ServiceUrls",
    __base__=ServiceSettings,
    **{
        f"{service.name}_url": (str, Field(f"http://127.0.0.1:{service.default_port}",
                                           validation_alias=AliasChoices(service.url_setting)))
        for service in SERVICES
    },
)


class GatewaySettings(_ServiceUrls):
    model_config = SettingsConfigDict(env_prefix="VMC_GATEWAY_", extra="ignore", populate_by_name=True)

    name: str = "gateway"
    port: int = 8000
    rate_limit_per_minute: int = Field(600, validation_alias=AliasChoices("VMC_RATE_LIMIT_PER_MINUTE"))
    redis_url: str = Field("", validation_alias=AliasChoices("VMC_REDIS_URL"))
    bootstrap_admin_key: str = Field("", validation_alias=AliasChoices("VMC_BOOTSTRAP_ADMIN_KEY"))
    # How long a looked-up key is trusted before the database is asked again: a revocation or a new
    # key made on another replica (or with the CLI) takes effect there within this delay.
    key_cache_seconds: float = 2.0
    max_concurrent_per_key: int = 32
    # Wrong keys one client address may present a minute (bursts up to as many); beyond, that address
    # is answered 429 for a while, whatever key it sends (guessing keys stays slow).
    failed_auth_per_minute: int = 30
    # Time limits per route: reads and writes, imports and batches, exports (see proxy.timeout_for).
    upstream_timeout_seconds: float = 30.0
    import_timeout_seconds: float = 300.0
    export_timeout_seconds: float = 120.0
    connect_timeout_seconds: float = 2.0
    body_read_timeout_seconds: float = 60.0
    # A request head (request line and headers) not complete this long after its first byte is
    # answered 408 and the connection closed (a client trickling header bytes holds no connection).
    header_read_timeout_seconds: float = 10.0
    # A request head (request line and headers) larger than this is answered 431 and the connection
    # closed: the parser would otherwise hold a head of any size in memory and forward it.
    max_head_bytes: int = 65536
    # A service failing this many requests in a row is not called for `circuit_cooldown_seconds`.
    circuit_failure_threshold: int = 5
    circuit_cooldown_seconds: float = 5.0
    cors_origins: str = Field("", validation_alias=AliasChoices("VMC_CORS_ORIGINS"))

    def url_of(self, service: str) -> str:
        """Base URL of a service of the manifest."""
        return getattr(self, f"{service}_url")
