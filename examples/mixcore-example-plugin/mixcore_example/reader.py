"""Reads JSON Lines chat records into mixcore samples."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, ROLES, Message, Sample


def read_jsonl_messages(
    files: Iterable[str],
    *,
    base_dir: str,
    system_prompt: str | None = None,
    max_records: int | None = None,
    label: str = "",
) -> list[Sample]:
    """Every record of every file as a :class:`Sample`; a bad record raises :class:`DataError`."""
    samples: list[Sample] = []
    for name in files:
        path = Path(base_dir) / name
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read: {exc}", source=str(path)) from None
        records = [line for line in lines if line.strip()]
        for index, line in enumerate(records[:max_records]):
            samples.append(_to_sample(line, path, index, system_prompt, label))
    return samples


def _to_sample(line: str, path: Path, index: int, system: str | None, label: str) -> Sample:
    def fail(message: str) -> DataError:
        return DataError(message, source=str(path), index=index)

    try:
        record = json.loads(line)
    except ValueError as exc:
        raise fail(f"not a JSON object: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise fail('expected {"messages": [...], "images": [...]}')
    messages = [Message("system", system)] if system else []
    for turn in record["messages"]:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES:
            raise fail(f"each message needs a role among {ROLES}")
        if not isinstance(turn.get("content"), str):
            raise fail("each message needs a string content")
        messages.append(Message(turn["role"], turn["content"]))
    images = record.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise fail("images must be a list of paths")
    placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
    if placeholders != len(images):
        raise fail(f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(images)} image(s)")
    return Sample(
        messages=messages,
        images=[path.parent / i for i in images],
        source=str(path),
        index=index,
        dataset=label,
    )
