"""The config a run reads: loaded, overridden from the command line, checked, and completed.

A run never reads a config that did not come through :func:`prepare_config`: every problem has
been reported (the same checks as ``mixcore validate``), every default is filled in once
(:func:`~mixcore.config.schema.apply_defaults`, so readers use ``config[key]``), and every path
in it is absolute.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixcore.config.loading import load_config
from mixcore.config.schema import apply_defaults
from mixcore.config.validation import check_config, resolve_model_path

if TYPE_CHECKING:
    from mixcore.registry import Registry


def prepare_config(
    config: dict[str, Any],
    registry: Registry,
    *,
    base_dir: Path,
    source: str = "<config>",
    world_size: int | None = None,
) -> dict[str, Any]:
    """``config`` checked and completed for a run.

    :param base_dir: the config file's folder, which paths in the config are relative to (like
        its data files): ``model_name_or_path`` when it names a folder there, ``output_dir``,
        ``logging_dir`` and a ``resume_from_checkpoint`` folder.
    :raises ConfigError: listing every problem, as ``mixcore validate`` reports them.
    """
    check_config(config, registry, source=source, base_dir=base_dir, world_size=world_size)
    config = apply_defaults(resolve_model_path(config, base_dir))
    config["output_dir"] = str((base_dir / config["output_dir"]).expanduser().resolve())
    if config.get("logging_dir"):
        config["logging_dir"] = str((base_dir / config["logging_dir"]).expanduser().resolve())
    resume = config.get("resume_from_checkpoint")
    if isinstance(resume, str) and resume:
        config["resume_from_checkpoint"] = str((base_dir / resume).expanduser().resolve())
    return config


def load_run_config(
    path: str | Path,
    registry: Registry,
    *,
    output_dir: str | None = None,
    max_steps: int | None = None,
    resume_from_checkpoint: str | None = None,
    world_size: int | None = None,
) -> tuple[dict[str, Any], Path]:
    """Read the config file at ``path``, apply command-line overrides, and prepare it.

    Override paths are relative to where the command runs, unlike the config's own paths.
    Returns the prepared config and the config file's folder (``build_dataset``'s ``base_dir``).
    """
    path = Path(path)
    config = load_config(path)
    if output_dir:
        config["output_dir"] = str(Path(output_dir).resolve())
    if max_steps is not None:
        config["max_steps"] = max_steps
    if resume_from_checkpoint:
        config["resume_from_checkpoint"] = str(Path(resume_from_checkpoint).resolve())
    base_dir = path.resolve().parent
    prepared = prepare_config(
        config, registry, base_dir=base_dir, source=str(path), world_size=world_size
    )
    return prepared, base_dir
