"""Registry settings (`VMC_REGISTRY_*`, plus the common `VMC_*`)."""
from pydantic_settings import SettingsConfigDict

from shared.caller import GDY_ORGANIZATION_ID  # noqa: F401 - the registry's migrations and tests read it here
from shared.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VMC_REGISTRY_", extra="ignore", populate_by_name=True)

    name: str = "registry"
    port: int = 8001
