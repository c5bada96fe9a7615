-- The registry's own database beside Dagster's (POSTGRES_DB): SM_REGISTRY_URL=.../registry
CREATE DATABASE registry;
