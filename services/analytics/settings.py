"""Analytics settings (`VMC_ANALYTICS_*`, plus the common `VMC_*`)."""
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class AnalyticsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VMC_ANALYTICS_", extra="ignore", populate_by_name=True)

    name: str = "analytics"
    port: int = 8003
    # The DuckDB read store of this replica (one writer per file: each replica keeps its own, built
    # from the log). Empty: `<data_dir>/analytics.duckdb`; ":memory:" keeps it in memory (tests).
    store_path: str = ""
    # The Kafka group of this replica's consumer: every replica reads every partition into its own
    # store, so each needs a group of its own (e.g. `analytics-<pod name>`); one replica: the default.
    consumer_group: str = "analytics"
    # A row built from fewer distinct volunteers than this is suppressed (product §4), unless the key
    # holds `analytics:unsuppressed`.
    suppression_k: int = Field(5, ge=1)
    # The DHIS2 export's mapping file (format: services/analytics/dhis2.py). Empty: the committed example.
    dhis2_mapping: str = ""

    def resolved_store_path(self) -> str:
        if self.store_path:
            return self.store_path
        return str((self.data_dir / "analytics.duckdb").resolve())
