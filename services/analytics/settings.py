"""Analytics settings (`VMC_ANALYTICS_*`, plus the common `VMC_*`)."""
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class AnalyticsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VMC_ANALYTICS_", extra="ignore", populate_by_name=True)

    name: str = "analytics"
    port: int = 8003
