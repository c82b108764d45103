"""Activities settings (`VMC_ACTIVITIES_*`, plus the common `VMC_*`)."""
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ActivitiesSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VMC_ACTIVITIES_", extra="ignore", populate_by_name=True)

    name: str = "activities"
    port: int = 8002
