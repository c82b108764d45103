"""Registry settings (`VMC_REGISTRY_*`, plus the common `VMC_*`)."""
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings

# The national body every bootstrap admin key belongs to; seeded by the first migration.
GDY_ORGANIZATION_ID = "00000000-0000-4000-8000-000000000001"


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VMC_REGISTRY_", extra="ignore", populate_by_name=True)

    name: str = "registry"
    port: int = 8001
