"""Activities settings (`VMC_ACTIVITIES_*`, plus the common `VMC_*`)."""
from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ActivitiesSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VMC_ACTIVITIES_", extra="ignore", populate_by_name=True)

    name: str = "activities"
    port: int = 8002
    # Where the registry answers a projection miss; the same variable the gateway reads.
    registry_url: str = Field("http://127.0.0.1:8001", validation_alias=AliasChoices("VMC_REGISTRY_URL"))
    # A miss waits at most this long for the registry before answering 503 (retry): a request must not
    # hang on a registry that is down or slow.
    registry_timeout_s: float = Field(2.0, gt=0, le=30)
