"""Records the registry keeps: one per plugin, one per model, one per dataset kind."""

from __future__ import annotations

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
    # No export hook exists yet, so nothing can honestly claim deployment.
    "deploy": ("export_model",),
}

OK = "ok"
BROKEN = "broken"


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
    builtin: bool = False

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
