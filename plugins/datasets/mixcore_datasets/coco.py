"""Reader of COCO-style caption annotations: one image, several reference captions.

Three layouts are accepted, told apart by the file's top-level JSON type and keys:

* the official COCO captions file, an object joining two tables by image id::

      {"images": [{"id": 42, "file_name": "val2014/COCO_val2014_000000000042.jpg", ...}],
       "annotations": [{"image_id": 42, "id": 7, "caption": "A dog on a couch."}, ...]}

  Record ``i`` is ``annotations[i]``; images no annotation refers to are ignored (test splits
  list images without captions).
* the list used by the Karpathy splits, LAVIS and PaddleMIX::

      [{"image": "val2014/COCO_val2014_000000000042.jpg",
        "caption": "A dog on a couch." or ["A dog on a couch.", "..."],
        "image_id": "coco_42"}]

  Record ``i`` is the list's element ``i``; a ``.jsonl`` file holds these records one per line.
* Karpathy's ``dataset_coco.json`` (also ``dataset_flickr8k.json`` / ``dataset_flickr30k.json``),
  an object with only an ``images`` table whose entries carry their own captions and split::

      {"images": [{"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg",
                   "split": "restval", "sentences": [{"raw": "A dog on a couch.", ...}]}],
       "dataset": "coco"}

  Record ``i`` is ``images[i]``; the image path is ``filepath/filename`` (``filename`` alone when
  there is no ``filepath``, as in the Flickr files). Such a file needs the ``split`` option (one
  name or a list of train, val, test, restval): training on every split would train on the test
  images.

Each caption becomes a sample with a user message ``"<image>\\n" + prompt`` and the caption
(whitespace-stripped: COCO captions often end in a space or newline) as the assistant reply.
``captions="first"`` keeps one sample per image instead: the first good caption in file order,
across records and files. Image paths are relative to ``image_root`` and may not leave it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message, Sample
from mixcore.kit.images import resolve_image
from mixcore_datasets.base import (
    OnBadSample,
    RecordDataset,
    check_no_image,
    json_type,
    option_source,
    string_field,
    text_value,
)
from mixcore_datasets.record_files import read_document

__all__ = ["DEFAULT_CAPTION_PROMPT", "CaptionChoice", "CocoCaptionDataset"]

#: The user text of every caption sample unless the config gives ``prompt``.
DEFAULT_CAPTION_PROMPT = "Describe the image in one sentence."

CaptionChoice = Literal["each", "first"]

#: The splits of the Karpathy files.
KARPATHY_SPLITS = ("train", "val", "test", "restval")


@dataclass(frozen=True)
class _Annotation:
    """One entry of an official file's ``annotations``, with that file's image table."""

    record: Any
    images: Mapping[Any, tuple[int, Any]]  # image id -> (position in 'images', image entry)


@dataclass(frozen=True)
class _KarpathyImage:
    """One entry of a Karpathy file's ``images``, with its captions and split."""

    record: Any


class CocoCaptionDataset(RecordDataset):
    """Caption samples from COCO-style annotation files, validated when the dataset is built.

    ``image_root`` is the folder image paths are relative to (default: each annotation file's
    folder); images are located and checked with :func:`~mixcore.kit.images.resolve_image` (no
    ``..`` or symlink escape from it) but not decoded. ``on_bad_sample`` and :attr:`skipped` work
    as in :class:`~mixcore_datasets.base.RecordDataset`.
    """

    def __init__(
        self,
        data_files: Iterable[Path],
        *,
        image_root: Path | None = None,
        prompt: str = DEFAULT_CAPTION_PROMPT,
        captions: CaptionChoice = "each",
        split: str | Iterable[str] | None = None,
        on_bad_sample: OnBadSample = "error",
        label: str = "",
        chat_template: dict[str, Any] | str | None = None,
    ) -> None:
        if captions not in ("each", "first"):
            raise ValueError(f"captions must be 'each' or 'first', got {captions!r}")
        try:
            check_no_image(text_value(prompt, "the prompt"), "the prompt")
        except ValueError as exc:
            raise DataError(str(exc), source=option_source(label, "prompt")) from None
        if image_root is not None and not Path(image_root).is_dir():
            raise DataError(
                f"image folder not found: {image_root}",
                source=option_source(label, "image_root"),
            )
        splits = [split] if isinstance(split, str) else None if split is None else list(split)
        unknown = [name for name in splits or () if name not in KARPATHY_SPLITS]
        if unknown or splits == []:
            raise DataError(
                f"split must name one or more of {', '.join(KARPATHY_SPLITS)}, got {split!r}",
                source=option_source(label, "split"),
            )
        self.splits = None if splits is None else tuple(splits)
        self.image_root = None if image_root is None else Path(image_root)
        self.prompt = prompt
        self.captions: CaptionChoice = captions
        self._seen_images: set[Path] = set()
        self._resolved: dict[tuple[Path, str], Path | str] = {}
        super().__init__(
            data_files, on_bad_sample=on_bad_sample, label=label, chat_template=chat_template
        )

    def read_records(self, data_file: Path) -> list[Any]:
        data = read_document(data_file, "annotation file")
        if _is_karpathy(data):
            if self.splits is None:
                raise DataError(
                    "this is a Karpathy split file (images with 'sentences' and 'split'); "
                    "set the option split to the part(s) to read: "
                    + ", ".join(KARPATHY_SPLITS)
                    + " (usually train and restval for training)",
                    source=str(data_file),
                )
            return [_KarpathyImage(entry) for entry in data["images"]]
        if self.splits is not None:
            raise DataError(
                "the option split selects parts of a Karpathy dataset_coco.json, but this file "
                "is not one (no 'images' entries with 'sentences'); remove split",
                source=str(data_file),
            )
        if isinstance(data, list):
            return data
        if isinstance(data, dict) and ("annotations" in data or "images" in data):
            return _joined_annotations(data, str(data_file))
        found = f"an object with keys {sorted(data)[:8]}" if isinstance(data, dict) else None
        raise DataError(
            "a caption file must hold a JSON list of {image, caption} records or a COCO object "
            "with 'images' and 'annotations', found " + (found or f"a JSON {json_type(data)}"),
            source=str(data_file),
        )

    def record_samples(self, record: Any, index: int, data_file: Path) -> list[Sample]:
        if isinstance(record, _KarpathyImage):
            entry = record.record
            if isinstance(entry, dict) and entry.get("split") not in (self.splits or ()):
                return []
            ref, captions = _karpathy_record(record.record)
        elif isinstance(record, _Annotation):
            ref, captions = _official_record(record)
        else:
            ref, captions = _listed_record(record)
        for n, caption in enumerate(captions):
            check_no_image(caption, "'caption'" if len(captions) == 1 else f"'caption' entry {n}")
        image = self._image(data_file, ref, index)
        if self.captions == "first":
            if image in self._seen_images:
                return []
            self._seen_images.add(image)
            captions = captions[:1]
        user = Message("user", f"{IMAGE_PLACEHOLDER}\n{self.prompt}")
        return [
            self.sample(data_file, index, [user, Message("assistant", caption)], [image])
            for caption in captions
        ]

    def _image(self, data_file: Path, ref: str, index: int) -> Path:
        """The checked path of ``ref``, resolved once per image however many captions it has."""
        root = self.image_root if self.image_root is not None else data_file.parent
        key = (root, ref)
        if key not in self._resolved:
            try:
                self._resolved[key] = resolve_image(root, ref, source=str(data_file), index=index)
            except DataError as exc:
                self._resolved[key] = exc.reason
        found = self._resolved[key]
        if isinstance(found, str):
            raise DataError(found, source=str(data_file), index=index)
        return found


def _joined_annotations(data: Mapping[str, Any], source: str) -> list[_Annotation]:
    """The annotations of an official COCO file, each carrying the file's image-id table.

    A damaged table (not a list, an entry without a usable id, a repeated id) is a problem with
    the whole file; an entry's missing ``file_name`` is reported by the annotations using it.
    """
    for key in ("images", "annotations"):
        if key not in data:
            raise DataError(
                f"a COCO caption file needs '{key}' beside the other table", source=source
            )
        if not isinstance(data[key], list):
            raise DataError(
                f"'{key}' must be a list, got a JSON {json_type(data[key])}", source=source
            )
    images: dict[Any, tuple[int, Any]] = {}
    for position, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            raise DataError(
                f"images[{position}] must be an object with 'id' and 'file_name', "
                f"got a JSON {json_type(entry)}",
                source=source,
            )
        image_id = entry.get("id")
        if isinstance(image_id, bool) or not isinstance(image_id, int | str):
            raise DataError(
                f"images[{position}] needs an integer or string 'id', got {image_id!r}",
                source=source,
            )
        if image_id in images:
            raise DataError(
                f"images[{position}] repeats id {image_id!r} of images[{images[image_id][0]}]",
                source=source,
            )
        images[image_id] = (position, entry)
    return [_Annotation(record, images) for record in data["annotations"]]


def _official_record(annotation: _Annotation) -> tuple[str, list[str]]:
    record = annotation.record
    if not isinstance(record, dict):
        raise ValueError(
            "an annotation must be an object with 'image_id' and 'caption', "
            f"got a JSON {json_type(record)}"
        )
    if "image_id" not in record:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise ValueError(f"annotation has no 'image_id' (keys: {keys})")
    image_id = record["image_id"]
    known = not isinstance(image_id, bool) and isinstance(image_id, int | str)
    found = annotation.images.get(image_id) if known else None
    if found is None:
        raise ValueError(
            f"annotation refers to image id {image_id!r}, which 'images' does not list"
        )
    position, entry = found
    image = f"image id {image_id!r} (images[{position}])"
    if "file_name" not in entry:
        raise ValueError(f"{image} has no 'file_name'")
    ref = text_value(entry["file_name"], f"'file_name' of {image}")
    return ref, [string_field(record, "caption").strip()]


def _listed_record(record: Any) -> tuple[str, list[str]]:
    if not isinstance(record, dict):
        raise ValueError(
            f"a record must be an object with 'image' and 'caption', got a JSON {json_type(record)}"
        )
    ref = string_field(record, "image")
    value = record.get("caption")
    if isinstance(value, list):
        if not value:
            raise ValueError("'caption' is an empty list")
        return ref, [text_value(c, f"'caption' entry {n}").strip() for n, c in enumerate(value)]
    if value is not None and not isinstance(value, str):
        raise ValueError(
            f"'caption' must be a string or a list of strings, got a JSON {json_type(value)}"
        )
    return ref, [string_field(record, "caption").strip()]


def _is_karpathy(data: Any) -> bool:
    """Whether ``data`` is a Karpathy split file: ``images`` entries with ``sentences``."""
    if not isinstance(data, dict) or "annotations" in data:
        return False
    images = data.get("images")
    return isinstance(images, list) and any(
        isinstance(entry, dict) and "sentences" in entry for entry in images[:50]
    )


def _karpathy_record(record: Any) -> tuple[str, list[str]]:
    if not isinstance(record, dict):
        raise ValueError(
            "an images entry must be an object with 'filename' and 'sentences', "
            f"got a JSON {json_type(record)}"
        )
    name = string_field(record, "filename")
    folder = record.get("filepath")
    if folder in (None, ""):
        return name, _sentences(record)
    return f"{text_value(folder, repr('filepath'))}/{name}", _sentences(record)


def _sentences(record: dict[str, Any]) -> list[str]:
    sentences = record.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise ValueError("'sentences' must be a non-empty list of {raw} objects")
    captions = []
    for n, sentence in enumerate(sentences):
        if not isinstance(sentence, dict) or "raw" not in sentence:
            raise ValueError(f"'sentences' entry {n} is not an object with 'raw'")
        captions.append(text_value(sentence["raw"], f"'sentences' entry {n} 'raw'").strip())
    return captions
