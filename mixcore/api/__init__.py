"""The contract between mixcore and its plugins, in one place.

Everything a plugin may rely on about *what* crosses the boundary lives here: the hook
specifications and the ``hookimpl`` marker, the records (:class:`Sample`, :class:`Message`,
:class:`ModelBundle`), the error types, and the constants both sides agree on. This package
imports nothing else of mixcore (import-linter checks it), so it never changes because the core's
internals do. The services a model plugin may *use* (conversation encoding, collation, generation,
checkpoint I/O, images) are the toolkit, :mod:`mixcore.kit`; test helpers are
:mod:`mixcore.testing`. Plugins import those three and nothing else of mixcore.
"""

from mixcore.api.constants import (
    CAPABILITIES,
    DATASET_ENTRY_SCHEMA,
    IGNORE_INDEX,
    LOSS_TERMS_KEY,
    MODEL_RECORD_KEY,
    SKIPPED_ATTRIBUTE,
)
from mixcore.api.errors import (
    ConfigError,
    DataError,
    EnvironmentProblem,
    MixcoreError,
    PluginError,
    PluginHookError,
    UnknownNameError,
    UsageError,
)
from mixcore.api.markers import PROJECT, hookimpl, hookspec
from mixcore.api.parallel import ParallelPlan, plan_problems
from mixcore.api.records import (
    EXPORT_ROLES,
    IMAGE_PLACEHOLDER,
    ROLES,
    ExportPart,
    Message,
    ModelBundle,
    ModelExport,
    Sample,
    ShardedSource,
    TensorSpec,
)

__all__ = [
    "CAPABILITIES",
    "DATASET_ENTRY_SCHEMA",
    "EXPORT_ROLES",
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "LOSS_TERMS_KEY",
    "MODEL_RECORD_KEY",
    "PROJECT",
    "ROLES",
    "SKIPPED_ATTRIBUTE",
    "ConfigError",
    "DataError",
    "EnvironmentProblem",
    "ExportPart",
    "Message",
    "MixcoreError",
    "ModelBundle",
    "ModelExport",
    "ParallelPlan",
    "PluginError",
    "PluginHookError",
    "Sample",
    "ShardedSource",
    "TensorSpec",
    "UnknownNameError",
    "UsageError",
    "hookimpl",
    "hookspec",
    "plan_problems",
]
