"""Service-to-service routes of the registry (not public: the gateway routes none of them)."""
