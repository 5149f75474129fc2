"""`mixcore export`: a trained model as Paddle static inference programs, for deployment.

The model is loaded as ``mixcore infer`` loads it (:func:`mixcore.inference.request_model`: a
final model folder, a merged LoRA model, a preset, or a base with ``--lora``
merged on the fly). Its plugin's ``export_model`` hook names the parts (by role) and writes the
prompt-side files; the core traces each part with ``paddle.jit.to_static``, saves it with
``paddle.jit.save``, runs the saved program through Paddle Inference on probe inputs against the
layer (unless ``verify`` is off), checks that the plugin can read its files back
(``load_processing``), and writes the manifest (:mod:`mixcore.exported`) last.

Everything is written into a hidden staging folder next to the output (``.NAME.partial-export-
...``) and renamed into place at the end, so an interrupted export leaves no folder that looks
finished. An output folder is written only when it does not exist or is empty; ``--overwrite``
replaces a previous export, and only one whose files are exactly those its manifest lists
(nothing the user added is ever deleted).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixcore import __version__
from mixcore.api.errors import MixcoreError, PluginError, UsageError
from mixcore.api.records import EXPORT_ROLES, ExportPart, ModelExport
from mixcore.exported import (
    LOGIT_ROLES,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    POSITIONS_INPUT,
    PROCESSING_FOLDER,
    PROMPT_LENGTH_INPUT,
    ExportFolderError,
    export_files,
    read_manifest,
)
from mixcore.inference import ModelRequest, load_requested
from mixcore.lora import LORA_BASE_FILE
from mixcore.registry import Registry


class ExportFailed(MixcoreError):
    """Paddle could not trace or save a part (exit code 1: not the user's input to fix)."""


@dataclass
class ExportResult:
    output: Path
    manifest: dict[str, Any]


def adapter_problem(model: str | None) -> str | None:
    """What is wrong with exporting ``--model`` when it is a LoRA adapter folder, or None."""
    if model and (Path(model).expanduser() / LORA_BASE_FILE).is_file():
        return (
            f"{model} is a LoRA adapter, not a model: export it merged into its base with "
            f"`mixcore export --lora {model} --output DIR` (the recorded base, merged on the "
            "fly), or merge it first with `mixcore merge-lora`"
        )
    return None


def output_problem(output: Path, *, overwrite: bool) -> str | None:
    """Why ``output`` cannot receive an export, or None. Only a missing or empty folder, or
    (with ``overwrite``) a complete earlier export holding nothing but its own files, can."""
    if output.exists() and not output.is_dir():
        return f"--output {output} exists and is not a folder"
    if not output.is_dir() or not any(output.iterdir()):
        return None
    if not overwrite:
        return f"--output {output} is not empty; pass --overwrite to replace an earlier export"
    try:
        manifest = read_manifest(output)
    except ExportFolderError:
        return (
            f"--output {output} holds files mixcore did not write (it is not a complete "
            "export); refusing to replace them"
        )
    listed = set(manifest["files"]) | {MANIFEST_FILE}
    extra = sorted(set(export_files(output)) - listed)
    extra += sorted(
        p.relative_to(output).as_posix()
        for p in output.rglob("*")
        if not p.is_file() and not p.is_dir()
    )
    if extra:
        shown = ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else "")
        return (
            f"--output {output} is an earlier export but also holds files mixcore did not "
            f"write ({shown}); refusing to replace them"
        )
    return None


def export_model(
    registry: Registry,
    request: ModelRequest,
    output: Path,
    *,
    max_length: int | None = None,
    overwrite: bool = False,
    verify: bool = True,
    report: Callable[[str], None] | None = None,
) -> ExportResult:
    """Load the requested model, export it into ``output`` and return the manifest.

    :raises UsageError: ``output`` cannot be written, or the model cannot be exported (its
        plugin has no ``export_model`` hook or says why not).
    :raises ExportFailed: Paddle failed to trace or save a part, or (with ``verify``) a saved
        part run through Paddle Inference differs from the model on probe inputs.
    """
    say = report or (lambda _text: None)
    output = Path(output).expanduser().absolute()
    problem = output_problem(output, overwrite=overwrite)
    if problem:
        raise UsageError(problem)
    entry = request.entry
    if not entry.capabilities.get("deploy"):
        raise UsageError(cannot_export(registry, entry.name))
    if max_length is not None and max_length < 2:
        raise UsageError(f"--max-length must be at least 2, got {max_length}")
    bundle = load_requested(registry, request)
    from mixcore.kit.weights import parameter_dtype

    if parameter_dtype(bundle.model) != "float32":
        raise UsageError(
            f"the model's parameters are {parameter_dtype(bundle.model)}; exports are float32: "
            'pass --model-options \'{"dtype": "float32"}\''
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-export-", dir=output.parent))
    staging.chmod(_folder_mode())
    try:
        processing = staging / PROCESSING_FOLDER
        processing.mkdir()
        spec = registry.hook.export_model(
            model_name=entry.name, bundle=bundle, folder=str(processing), max_length=max_length
        )
        if spec is None:
            raise UsageError(cannot_export(registry, entry.name))
        _check_spec(spec, entry.name)
        parts = {}
        for part in spec.parts:
            say(f"tracing the {part.role} part")
            parts[part.role] = _save_part(
                part, staging / part.role, verify=verify, vocab_size=spec.vocab_size
            )
        if registry.hook.load_processing(model_name=entry.name, folder=str(processing)) is None:
            raise PluginError(
                f"plugin {entry.plugin!r} exported model {entry.name!r} but its load_processing "
                "hook cannot read the files back"
            )
        manifest = {
            "format": MANIFEST_FORMAT,
            "model": entry.name,
            "plugin": entry.plugin,
            "mixcore_version": __version__,
            "paddle_version": _paddle_version(),
            "source": request.source,
            "lora": str(request.lora) if request.lora else None,
            "decoding": spec.decoding,
            "max_length": spec.max_length or max_length or _default_length(),
            "image_token_id": spec.image_token_id,
            "tokens_per_image": spec.tokens_per_image,
            "stop_ids": list(spec.stop_ids),
            "vocab_size": spec.vocab_size,
            "decoder_start_token_id": spec.decoder_start_token_id,
            "notes": list(spec.notes),
            "parts": parts,
            "processing": PROCESSING_FOLDER,
            "files": export_files(staging),
        }
        _write_manifest(staging / MANIFEST_FILE, manifest)
        _move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(output, manifest)


def cannot_export(registry: Registry, model: str) -> str:
    entry = registry.models[model]
    return (
        f"model {model!r} (plugin {entry.plugin!r}) cannot be exported: it does not claim "
        "the deploy capability (no export_model hook); docs/models.md lists which models "
        "export and why the others do not yet"
    )


def _default_length() -> int:
    from mixcore.kit.nn.export import DEFAULT_EXPORT_LENGTH

    return DEFAULT_EXPORT_LENGTH


def _check_spec(spec: ModelExport, model: str) -> None:
    if spec.decoding not in EXPORT_ROLES:
        raise PluginError(
            f"model {model!r} exports with unknown decoding {spec.decoding!r} (known: "
            f"{', '.join(EXPORT_ROLES)})"
        )
    roles = [part.role for part in spec.parts]
    if sorted(roles) != sorted(EXPORT_ROLES[spec.decoding]):
        raise PluginError(
            f"model {model!r}: a {spec.decoding} export has the parts "
            f"{', '.join(EXPORT_ROLES[spec.decoding])}, not {', '.join(roles) or 'none'}"
        )


def _save_part(
    part: ExportPart, folder: Path, *, verify: bool, vocab_size: int | None
) -> dict[str, Any]:
    """Trace and save one part into ``folder``; its manifest entry. With ``verify`` the saved
    program runs through Paddle Inference on probe inputs and must give what the layer gives
    (:data:`VERIFY_TOLERANCE`); the largest difference is recorded."""
    import paddle
    from paddle.static import InputSpec

    from mixcore.api.records import TensorSpec
    from mixcore.kit.nn.export import (
        SelectedDecoderLogits,
        SelectedLogits,
        SelectedPromptLogits,
    )

    inputs = list(part.inputs)
    layer = part.layer
    if part.role in LOGIT_ROLES:
        names = tuple(spec.name for spec in inputs)
        wrapper = LOGIT_INPUTS.get((part.role, names))
        if wrapper is None:
            raise PluginError(
                f"a {part.role} part takes {' or '.join(map(str, _logit_inputs(part.role)))}, "
                f"not {names}"
            )
        wrapper_class = {
            "language": SelectedLogits,
            "language+prompt": SelectedPromptLogits,
            "decoder": SelectedDecoderLogits,
        }[wrapper]
        layer = wrapper_class(layer)
        inputs.append(TensorSpec(POSITIONS_INPUT, (None,), "int64"))
    layer.eval()
    specs = [InputSpec([-1 if d is None else d for d in s.shape], s.dtype, s.name) for s in inputs]
    folder.mkdir()
    probe = _probe_inputs(inputs, vocab_size) if verify else None
    if probe is not None:
        with paddle.no_grad():
            expected = layer(*[paddle.to_tensor(x) for x in probe]).numpy()
    try:
        static = paddle.jit.to_static(layer, input_spec=specs, full_graph=True)
        paddle.jit.save(static, str(folder / "model"))
    except Exception as exc:
        last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        failure = ExportFailed(f"Paddle could not export the {part.role} part: {last[0]}")
        failure.detail = f"{type(exc).__name__}: {exc}"
        raise failure from exc
    program = next(
        (p for p in (folder / "model.json", folder / "model.pdmodel") if p.is_file()), None
    )
    params = folder / "model.pdiparams"
    if program is None or not params.is_file():
        raise ExportFailed(
            f"paddle.jit.save wrote no program or no parameters for the {part.role} part (a "
            "part must hold at least one parameter)"
        )
    root = folder.parent
    entry: dict[str, Any] = {
        "program": program.relative_to(root).as_posix(),
        "params": params.relative_to(root).as_posix(),
        "inputs": [s.to_json() for s in inputs],
    }
    if probe is not None:
        entry["verified_max_abs_diff"] = _verify(
            part.role, program, params, inputs, probe, expected
        )
    return entry


#: How far the exported program may be from the dynamic layer on the probe inputs: this much
#: times the largest magnitude of the layer's output (at least 1).
VERIFY_TOLERANCE = 1e-4


def _probe_inputs(inputs: list[Any], vocab_size: int | None) -> list[Any]:
    """Inputs of each spec's shape (3 where any size is allowed): random normal floats, random
    ids below ``vocab_size``, every position of the sequence, half of it as the prompt."""
    import numpy as np

    rng = np.random.default_rng(0)
    shapes = [[3 if d is None else d for d in spec.shape] for spec in inputs]
    length = shapes[0][1] if len(shapes[0]) > 1 else 1
    arrays = []
    for spec, shape in zip(inputs, shapes, strict=True):
        if spec.name == POSITIONS_INPUT:
            arrays.append(np.arange(length, dtype=np.int64))
        elif spec.name == PROMPT_LENGTH_INPUT:
            arrays.append(np.array([max(2, length // 2)], dtype=np.int64))
        elif spec.dtype.startswith("int"):
            arrays.append(rng.integers(0, vocab_size or 100, size=shape).astype(spec.dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(spec.dtype))
    return arrays


def _verify(
    role: str, program: Path, params: Path, inputs: list[Any], probe: list[Any], expected: Any
) -> float:
    import numpy as np

    from mixcore.exported import Part, create_predictor

    runner = Part(role, [spec.to_json() for spec in inputs], create_predictor(program, params))
    got = runner(*probe)
    if got.shape != expected.shape:
        raise ExportFailed(
            f"the exported {role} part returns shape {list(got.shape)} where the model gives "
            f"{list(expected.shape)}"
        )
    diff = float(np.abs(got - expected).max()) if got.size else 0.0
    scale = max(1.0, float(np.abs(expected).max()) if expected.size else 0.0)
    if not diff <= VERIFY_TOLERANCE * scale:
        raise ExportFailed(
            f"the exported {role} part differs from the model by up to {diff:.3g} on probe "
            "inputs (Paddle Inference on the CPU, oneDNN off); nothing was written"
        )
    return diff


def _folder_mode() -> int:
    """The mode a new folder gets under the process's umask (mkdtemp makes them private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


#: The inputs a logit part may declare (in order), and the core's wrapper for each.
LOGIT_INPUTS: dict[tuple[str, tuple[str, ...]], str] = {
    ("language", ("inputs_embeds",)): "language",
    ("language", ("inputs_embeds", PROMPT_LENGTH_INPUT)): "language+prompt",
    ("decoder", ("decoder_input_ids", "encoder_hidden_states")): "decoder",
}


def _logit_inputs(role: str) -> list[tuple[str, ...]]:
    return [names for (r, names) in LOGIT_INPUTS if r == role]


def _paddle_version() -> str:
    import paddle

    return str(paddle.__version__)


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    for file in sorted(path.parent.rglob("*")):
        if file.is_file():
            with file.open("rb") as handle:
                os.fsync(handle.fileno())
    with path.open("w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _move_into_place(staging: Path, output: Path) -> None:
    """Rename the finished ``staging`` to ``output``; an empty ``output`` folder or a checked
    earlier export there is set aside first and removed after."""
    previous = None
    if output.is_dir():
        if any(output.iterdir()):
            previous = Path(
                tempfile.mkdtemp(prefix=f".{output.name}.replaced-export-", dir=output.parent)
            )
            os.replace(output, previous / output.name)
        else:
            output.rmdir()
    os.replace(staging, output)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
