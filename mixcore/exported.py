"""An exported model folder and the Paddle Inference runtime that answers with it.

``mixcore export`` (:mod:`mixcore.export`) writes a folder that holds, per part of the model
(the roles of :data:`mixcore.api.records.EXPORT_ROLES`), a static program saved by
``paddle.jit.save`` (``model.json`` with Paddle's PIR, ``model.pdmodel`` with the older
format) and its ``model.pdiparams``; a ``processing`` folder with the plugin's prompt-side
files (config, tokenizer, image processor); and :data:`MANIFEST_FILE`, written last, which
lists every file with its size. A folder without a complete manifest is not an export.

:class:`ExportedModel` opens each part with ``paddle.inference.create_predictor`` and decodes
greedily without a key/value cache: the whole sequence runs through the language part at each
step (padded on the right to the part's fixed length, if it has one; the part is causal, so the
padding changes no real position's logits), and only the last position's logits are read.
Paddle is imported only when a predictor is created.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixcore.api.errors import MixcoreError, UsageError
from mixcore.api.records import EXPORT_ROLES

#: The manifest of an export folder; written last, so its presence means the export finished.
MANIFEST_FILE = "mixcore_export.json"
#: The manifest's format marker.
MANIFEST_FORMAT = "mixcore-export/1"
#: The folder (inside an export) holding the plugin's prompt-side files.
PROCESSING_FOLDER = "processing"
#: The input the core adds to the ``language`` and ``decoder`` parts: which positions' logits
#: to return (the greedy loop asks for the last one only).
POSITIONS_INPUT = "positions"
#: An optional second input of a ``language`` part: the prompt's length ``[1]`` (int64), for a
#: model whose attention over the prompt is not causal (ChatGLM attends both ways over it).
PROMPT_LENGTH_INPUT = "prompt_length"
#: Roles whose output is logits, and which therefore take :data:`POSITIONS_INPUT`.
LOGIT_ROLES = ("language", "decoder")
_MANIFEST_LIMIT = 1 << 20


class ExportFolderError(UsageError):
    """A folder given as an export is not one, or not a complete one."""


def is_export_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder with an export manifest (complete or not: see
    :func:`read_manifest`)."""
    try:
        return (Path(path) / MANIFEST_FILE).is_file()
    except (OSError, ValueError):
        return False


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of the export in ``folder``, checked: its format, its roles, and that every
    file it lists is there with the size it had when the export was written.

    :raises ExportFolderError: ``folder`` is not a complete mixcore export.
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ExportFolderError(
            f"{folder} is not an exported model (no {MANIFEST_FILE}): write one with "
            "`mixcore export --model DIR --output DIR`"
        )
    if path.stat().st_size > _MANIFEST_LIMIT:
        raise ExportFolderError(f"{path} is too large to be an export manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportFolderError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ExportFolderError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    decoding = manifest.get("decoding")
    parts = manifest.get("parts")
    if decoding not in EXPORT_ROLES or not isinstance(parts, dict):
        raise ExportFolderError(f"{path}: unknown decoding {decoding!r} or no parts")
    missing_roles = set(EXPORT_ROLES[decoding]) - set(parts)
    if missing_roles:
        raise ExportFolderError(f"{path}: parts missing: {', '.join(sorted(missing_roles))}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ExportFolderError(f"{path} lists no files")
    problems = []
    for name, size in files.items():
        target = folder / name
        if not target.is_file():
            problems.append(f"{name} is missing")
        elif target.stat().st_size != size:
            problems.append(f"{name} has {target.stat().st_size} bytes, not {size}")
    if problems:
        raise ExportFolderError(
            f"{folder} is an incomplete or altered export ({'; '.join(problems[:5])}): export "
            "it again"
        )
    return manifest


def export_files(folder: Path, *, skip: Sequence[str] = ()) -> dict[str, int]:
    """Every file under ``folder`` (relative POSIX path -> size), except ``skip``."""
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() not in skip
    }


def create_predictor(program: Path, params: Path) -> Any:
    """A CPU Paddle Inference predictor for one saved program.

    oneDNN (MKLDNN), Paddle Inference's default CPU backend, is turned off: with it, the
    locked Paddle (3.3.1) gave the tiny Qwen-VL's language logits off by up to 4306 and failed
    to run its vision part ("Tensor holds no memory"); the plain CPU kernels match the dynamic
    model.
    """
    from paddle import inference

    config = inference.Config(str(program), str(params))
    config.disable_mkldnn()
    config.disable_glog_info()
    return inference.create_predictor(config)


@dataclass
class Part:
    """One exported part and its predictor."""

    role: str
    inputs: list[dict[str, Any]]
    predictor: Any

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        if len(arrays) != len(self.inputs):
            raise MixcoreError(f"the {self.role} part takes {len(self.inputs)} inputs")
        for spec, array in zip(self.inputs, arrays, strict=True):
            handle = self.predictor.get_input_handle(spec["name"])
            array = np.ascontiguousarray(array, dtype=spec["dtype"])
            handle.reshape(list(array.shape))
            handle.copy_from_cpu(array)
        self.predictor.run()
        output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])
        return output.copy_to_cpu()

    def fixed(self, input_index: int, axis: int) -> int | None:
        """The fixed size of one axis of one input, or None when it is dynamic."""
        size = self.inputs[input_index]["shape"][axis]
        return None if size is None or size < 0 else int(size)


class ExportedModel:
    """The parts of an export, run through Paddle Inference, and greedy decoding over them."""

    def __init__(self, folder: Path, manifest: Mapping[str, Any], parts: dict[str, Part]) -> None:
        self.folder = folder
        self.manifest = dict(manifest)
        self.parts = parts

    @classmethod
    def open(cls, folder: str | Path) -> ExportedModel:
        folder = Path(folder)
        manifest = read_manifest(folder)
        parts = {}
        for role in EXPORT_ROLES[manifest["decoding"]]:
            entry = manifest["parts"][role]
            predictor = create_predictor(folder / entry["program"], folder / entry["params"])
            parts[role] = Part(role, list(entry["inputs"]), predictor)
        return cls(folder, manifest, parts)

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self.manifest["stop_ids"])

    # -- the parts --------------------------------------------------------------------------

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """Token embeddings ``[n, hidden]`` of one row of ids."""
        return self.parts["embed"](np.asarray(input_ids, dtype=np.int64)[None])[0]

    def image_features(self, images: np.ndarray) -> np.ndarray:
        """Features ``[k, tokens, hidden]`` of ``k`` images, in chunks of the vision part's
        fixed batch size when it has one."""
        images = np.asarray(images, dtype=np.float32)
        part = self.parts["vision"]
        chunk = part.fixed(0, 0) or len(images)
        out = []
        for start in range(0, len(images), chunk):
            piece = images[start : start + chunk]
            real = len(piece)
            if real < chunk:
                pad = np.zeros((chunk - real, *piece.shape[1:]), dtype=piece.dtype)
                piece = np.concatenate([piece, pad])
            out.append(part(piece)[:real])
        return np.concatenate(out)

    def logits(self, role: str, *inputs: np.ndarray, length: int) -> np.ndarray:
        """The logits ``[vocab]`` at position ``length - 1`` of a logit part, its sequence
        input padded on the right to the part's fixed length."""
        part = self.parts[role]
        first = np.asarray(inputs[0])
        fixed = part.fixed(0, 1)
        if fixed is not None:
            if length > fixed:
                raise MixcoreError(
                    f"the sequence ({length} tokens) is longer than the export's {role} part "
                    f"takes ({fixed}): export again with a larger --max-length"
                )
            pad = np.zeros((first.shape[0], fixed - first.shape[1], *first.shape[2:]), first.dtype)
            first = np.concatenate([first, pad], axis=1)
        positions = np.array([length - 1], dtype=np.int64)
        return part(first, *inputs[1:], positions)[0, -1]

    def takes_prompt_length(self) -> bool:
        return any(spec["name"] == PROMPT_LENGTH_INPUT for spec in self.parts["language"].inputs)

    # -- decoding ---------------------------------------------------------------------------

    def prompt_embeddings(self, input_ids: np.ndarray, images: np.ndarray | None) -> np.ndarray:
        """Token embeddings of a prompt with each image's features over its tokens."""
        ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
        embeds = self.embed(ids)
        token_id = self.manifest["image_token_id"]
        slots = np.flatnonzero(ids == token_id) if token_id is not None else np.zeros(0, int)
        count = 0 if images is None else len(images)
        per_image = int(self.manifest["tokens_per_image"])
        if len(slots) != count * per_image:
            raise MixcoreError(
                f"the prompt has {len(slots)} image tokens for {count} image(s) of "
                f"{per_image} tokens each"
            )
        if count:
            features = self.image_features(images)
            embeds = embeds.copy()
            embeds[slots] = features.reshape(-1, features.shape[-1]).astype(embeds.dtype)
        return embeds

    def _choose(self, logits: np.ndarray) -> int:
        vocab = self.manifest.get("vocab_size")
        return int(np.argmax(logits[:vocab] if vocab else logits))

    def generate(
        self, input_ids: np.ndarray, images: np.ndarray | None, max_new_tokens: int
    ) -> list[int]:
        """Greedy new tokens for one prompt (its stop token and anything after it left out)."""
        embeds = self.prompt_embeddings(input_ids, images)
        stops = self.stop_ids
        new: list[int] = []
        if self.manifest["decoding"] == "encoder_decoder":
            encoded = self.parts["encoder"](embeds[None])
            decoder_ids = [int(self.manifest["decoder_start_token_id"])]
            for _ in range(max_new_tokens):
                ids = np.array([decoder_ids], dtype=np.int64)
                token = self._choose(self.logits("decoder", ids, encoded, length=len(decoder_ids)))
                new.append(token)
                if token in stops:
                    break
                decoder_ids.append(token)
            return _until_stop(new, stops)
        fixed = self.parts["language"].fixed(0, 1)
        extra = [np.array([len(embeds)], dtype=np.int64)] if self.takes_prompt_length() else []
        for _ in range(max_new_tokens):
            logits = self.logits("language", embeds[None], *extra, length=len(embeds))
            token = self._choose(logits)
            new.append(token)
            if token in stops or (fixed is not None and len(embeds) >= fixed):
                break
            embeds = np.concatenate([embeds, self.embed(np.array([token]))])
        return _until_stop(new, stops)

    def prompt_room(self, max_new_tokens: int) -> int:
        """How many tokens a prompt may take so that ``max_new_tokens`` still fit."""
        if self.manifest["decoding"] == "encoder_decoder":
            return self.max_length
        return self.max_length - max_new_tokens


def _until_stop(tokens: Sequence[int], stops: Sequence[int]) -> list[int]:
    kept = []
    for token in tokens:
        if token in stops:
            break
        kept.append(int(token))
    return kept
