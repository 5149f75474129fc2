"""Records the registry keeps: one per plugin, one per model, one per dataset kind."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

#: Capabilities a model entry may claim, and the hooks (of the registering plugin, or the core's
#: defaults) that must exist for the claim to be believable.
CAPABILITY_HOOKS: dict[str, tuple[str, ...]] = {
    "inference": ("load_model", "generate"),
    "sft": ("load_model", "preprocess_sample"),
    "pretrain": ("load_model", "preprocess_sample"),
    "lora": ("load_model", "preprocess_sample", "lora_target_modules"),
    "packing": ("load_model", "preprocess_sample", "sample_length", "collate_batch"),
    "tensor_parallel": ("load_model", "parallel_plan"),
    "pipeline_parallel": ("load_model", "parallel_plan"),
    # `mixcore export` writes the parts; `infer --engine paddle-inference` reads the prompt side.
    "deploy": ("load_model", "export_model", "load_processing"),
}

OK = "ok"
BROKEN = "broken"

#: Distributions shipped by the mixcore project. Their plugins are admitted first, so they keep
#: their model and dataset names against any third-party plugin. A distribution name (unlike an
#: entry-point or module name, which anyone may pick) is unique in an environment: installing
#: another package under one of these names replaces ours, which only the user can choose to do.
FIRST_PARTY_DISTRIBUTIONS = frozenset(
    {"mixcore", "mixcore-qwen-vl", "mixcore-blip2", "mixcore-visualglm", "mixcore-datasets"}
)


def is_first_party(distribution: str | None) -> bool:
    """Whether ``distribution`` (as pip spells it, any case or separator) is one of ours."""
    if not distribution:
        return False
    return re.sub(r"[-_.]+", "-", distribution).lower() in FIRST_PARTY_DISTRIBUTIONS


#: Loading a plugin (import and registration) for longer than this earns it a note: every
#: command, ``mixcore plugins list`` included, pays that time again.
SLOW_PLUGIN_SECONDS = 1.0


@dataclass
class PluginRecord:
    """What the registry knows about one plugin, healthy or not."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    description: str = ""
    status: str = OK
    reason: str | None = None
    detail: str | None = None
    hooks: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    #: The core's own default hooks (hidden from listings unless asked for).
    builtin: bool = False
    #: Shipped by the mixcore project (:data:`FIRST_PARTY_DISTRIBUTIONS`).
    first_party: bool = False
    #: Contributions refused because another plugin holds the name; each message names both.
    conflicts: list[str] = field(default_factory=list)
    #: Things worth knowing that are not failures: a slow load, output printed while loading.
    notes: list[str] = field(default_factory=list)
    #: What the plugin wrote to stdout while it was loaded (kept out of mixcore's own output).
    stdout: str = ""
    #: Wall time of importing and admitting the plugin.
    load_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("detail")
        return data


@dataclass(frozen=True)
class ModelEntry:
    """A model some plugin registered."""

    name: str
    description: str
    plugin: str
    options_schema: dict[str, Any]
    capabilities: dict[str, bool]
    aliases: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["aliases"], data["model_types"] = list(self.aliases), list(self.model_types)
        return data


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset kind some plugin registered."""

    name: str
    description: str
    plugin: str
    options_schema: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
