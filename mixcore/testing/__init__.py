"""Helpers for plugin authors' tests and mixcore's own.

:func:`check_model_conformance` (in :mod:`mixcore.testing.conformance`) runs the checks every
model plugin must pass against a real model. Build a registry from in-memory plugins (nothing global is touched, so nothing needs cleaning up),
run the CLI in-process against it, and write small fixtures::

    from mixcore import hookimpl
    from mixcore.testing import make_plugin, make_registry, run_cli

    def test_my_model_is_listed():
        @hookimpl
        def register_models(register):
            register(name="my_model", description="A test model")

        plugin = make_plugin("mine", register_models)
        result = run_cli(["plugins", "list", "--json"], plugins=[plugin])
        assert result.exit_code == 0
        assert "my_model" in result.stdout
"""

from mixcore.testing.conformance import (
    CHECKS,
    CheckResult,
    ConformanceFailure,
    ConformanceReport,
    check_model_conformance,
)
from mixcore.testing.plugins import (
    CliResult,
    InMemoryPlugin,
    make_plugin,
    make_registry,
    run_cli,
    write_config,
)

__all__ = [
    "CHECKS",
    "CheckResult",
    "CliResult",
    "ConformanceFailure",
    "ConformanceReport",
    "InMemoryPlugin",
    "check_model_conformance",
    "make_plugin",
    "make_registry",
    "run_cli",
    "write_config",
]
