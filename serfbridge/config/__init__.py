"""Configuration models (pydantic-settings). Kept empty so that the handler's cache hit
never imports pydantic: import config.models explicitly."""
