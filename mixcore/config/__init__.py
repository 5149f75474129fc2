"""Config files: loading (JSON/YAML), the composed schema, and validation."""

from mixcore.config.loading import load_config, parse_config_text
from mixcore.config.schema import compose_schema, core_schema
from mixcore.config.validation import check_config, validate_config

__all__ = [
    "check_config",
    "compose_schema",
    "core_schema",
    "load_config",
    "parse_config_text",
    "validate_config",
]
