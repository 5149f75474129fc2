"""In-memory plugins, registries built from them, and the CLI run in-process."""

from __future__ import annotations

import io
import json
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixcore.registry import Registry, build_registry
from mixcore.registry.verdict_cache import VerdictCache

InMemoryPlugin = tuple[str, Any]


def make_plugin(
    name: str,
    *hooks: Callable[..., Any],
    manifest: dict[str, Any] | None = None,
    **named_hooks: Callable[..., Any],
) -> InMemoryPlugin:
    """An in-memory plugin named ``name`` holding the given ``@hookimpl`` functions.

    Positional hooks are stored under their function name, keyword ones under the keyword (to
    give two test functions the same hook name). The plugin is a fresh module object, exactly
    what an entry point would load; ``manifest`` defaults to a valid one. Pass the result to
    :func:`make_registry` or :func:`run_cli`.
    """
    module = types.ModuleType(f"mixcore_test_plugin_{name}")
    module.manifest = (  # type: ignore[attr-defined]
        manifest
        if manifest is not None
        else {"api_version": 1, "description": f"test plugin {name}"}
    )
    for hook in hooks:
        setattr(module, hook.__name__, hook)
    for hook_name, hook in named_hooks.items():
        setattr(module, hook_name, hook)
    return name, module


def make_registry(
    *plugins: InMemoryPlugin,
    entry_points: bool = False,
    environ: dict[str, str] | None = None,
) -> Registry:
    """A registry of the given in-memory plugins (plus installed ones when ``entry_points``).

    ``MIXCORE_PLUGINS`` is ignored unless given in ``environ``, and the verdict cache is not used,
    so a test sees exactly the plugins it names and every validation really runs.
    """
    return build_registry(
        plugins, entry_points=entry_points, environ=environ or {}, cache=VerdictCache(enabled=False)
    )


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(
    argv: Sequence[str],
    *,
    plugins: Iterable[InMemoryPlugin] = (),
    entry_points: bool = False,
    environ: dict[str, str] | None = None,
) -> CliResult:
    """Run ``mixcore ARGV`` in this process against a registry of ``plugins``; capture output."""
    from mixcore.cli import Output, main

    plugins = list(plugins)
    out, err = io.StringIO(), io.StringIO()
    code = main(
        list(argv),
        registry_factory=lambda: make_registry(
            *plugins, entry_points=entry_points, environ=environ
        ),
        out=Output(out, err),
    )
    return CliResult(code, out.getvalue(), err.getvalue())


def write_config(folder: Path, config: dict[str, Any], name: str = "config.json") -> Path:
    """Write ``config`` as JSON into ``folder`` and return its path."""
    path = Path(folder) / name
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path
