"""Config files: loading (JSON/YAML), the composed schema, validation, and the prepared config a
run reads (checked, defaults filled in once, paths absolute)."""

from mixcore.config.loading import load_config, parse_config_text
from mixcore.config.prepare import load_run_config, prepare_config
from mixcore.config.schema import apply_defaults, compose_schema, core_schema
from mixcore.config.validation import (
    check_config,
    dataset_entry_issues,
    model_options_issues,
    validate_config,
)

__all__ = [
    "apply_defaults",
    "check_config",
    "compose_schema",
    "core_schema",
    "dataset_entry_issues",
    "load_config",
    "load_run_config",
    "model_options_issues",
    "parse_config_text",
    "prepare_config",
    "validate_config",
]
