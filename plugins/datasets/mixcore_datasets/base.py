"""What every dataset kind of this plugin shares: up-front validation and one bad-record policy.

A dataset kind reads one or more JSON files, each holding records; a record becomes zero or more
:class:`~mixcore.api.records.Sample` objects. :class:`RecordDataset` does the part that must behave the
same in every kind, so that ``on_bad_sample`` means one thing in a config whatever the kind:

* every record of every file is checked when the dataset is built, because a broken record found
  an hour into training costs far more than the milliseconds spent checking them all at start-up;
* ``"error"`` raises the first bad record as a :class:`~mixcore.api.errors.DataError` naming its file
  and index, and counts the others, so one run shows the scale of the problem;
* ``"skip"`` drops bad records, lists them in :attr:`RecordDataset.skipped` and logs one warning
  per file;
* a problem with a whole file (missing, invalid JSON, wrong layout) is always raised: skipping a
  file silently would change the data mixture behind the user's back.

The text helpers turn JSON values into checked strings with messages a user can act on, including
strings that JSON can carry but no tokenizer can encode (lone ``\\ud800`` surrogate escapes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message, Sample

__all__ = [
    "OnBadSample",
    "RecordDataset",
    "check_no_image",
    "check_text",
    "json_type",
    "option_source",
    "string_field",
    "text_value",
]

logger = logging.getLogger(__name__)

OnBadSample = Literal["error", "skip"]

_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type ("object", "array", ...), for messages."""
    return _JSON_TYPES.get(type(value), "number")


def check_text(text: str, what: str) -> str:
    """Return ``text`` if it is valid Unicode, else raise ``ValueError`` saying where it breaks.

    JSON's ``\\uXXXX`` escapes can produce lone UTF-16 surrogates (``"\\ud800"``), which Python
    keeps in a str but which cannot be encoded as UTF-8, so a tokenizer (or the file system, for
    a path) would fail on them later with an unhelpful traceback.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise ValueError(
            f"{what} is not valid UTF-8 text: it holds a lone surrogate U+{code:04X} at "
            f"character {exc.start} (an unpaired \\u{code:04x} escape in the JSON)"
        ) from None
    return text


def text_value(value: Any, what: str) -> str:
    """``value`` if it is a non-blank, valid string, else a ``ValueError`` naming ``what``."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got a JSON {json_type(value)}")
    check_text(value, what)
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


def check_no_image(text: str, what: str) -> str:
    """``text`` unless it holds the image placeholder, which would be mistaken for an image."""
    if IMAGE_PLACEHOLDER in text:
        raise ValueError(
            f"{what} contains '{IMAGE_PLACEHOLDER}', which marks where an image goes; "
            "this dataset kind places the record's one image itself"
        )
    return text


def string_field(record: Mapping[str, Any], key: str) -> str:
    """``record[key]`` checked by :func:`text_value`; a missing key lists the record's keys."""
    if key not in record:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise ValueError(f"record has no '{key}' (keys: {keys})")
    return text_value(record[key], f"'{key}'")


def option_source(label: str, option: str) -> str:
    """How errors name a dataset option, e.g. ``dataset vqa#0 option prompt_template``."""
    return f"dataset {label} option {option}" if label else f"option {option}"


class RecordDataset(Sequence[Sample]):
    """Samples from JSON record files, all validated when the dataset is built.

    Subclasses implement :meth:`read_records` (file-level checks) and :meth:`record_samples`
    (one record's checks and conversion); this class applies ``on_bad_sample`` uniformly and
    behaves as a read-only sequence of samples. ``chat_template`` is attached to every sample.
    """

    def __init__(
        self,
        data_files: Iterable[Path],
        *,
        on_bad_sample: OnBadSample = "error",
        label: str = "",
        chat_template: dict[str, Any] | str | None = None,
    ) -> None:
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
        self.data_files: list[Path] = [Path(path) for path in data_files]
        self.on_bad_sample: OnBadSample = on_bad_sample
        self.label = label
        self.chat_template = chat_template
        self._samples: list[Sample] | None = None
        #: Bad records dropped in ``"skip"`` mode, as ``(source, index, reason)``.
        self.skipped: list[tuple[str, int, str]] = []
        self._samples = list(self._read())  # records read one at a time (stream_records)

    @property
    def samples(self) -> list[Sample]:
        """Every sample, read and checked on first use."""
        if self._samples is None:
            self._samples = list(self._read())
        return self._samples

    def read_records(self, data_file: Path) -> Sequence[Any]:
        """The records of one file; raise :class:`DataError` for a problem with the whole file."""
        raise NotImplementedError

    def stream_records(self, data_file: Path) -> Iterable[Any]:
        """The records of one file, possibly one at a time (default: :meth:`read_records`)."""
        return self.read_records(data_file)

    def record_samples(self, record: Any, index: int, data_file: Path) -> list[Sample]:
        """The samples of one record (possibly none).

        Raise :class:`DataError`, or ``ValueError`` with a reason: this class adds the file and
        the record index to it.
        """
        raise NotImplementedError

    def _read(self) -> Iterator[Sample]:
        errors: list[DataError] = []
        self.skipped = []
        for data_file in self.data_files:
            source = str(data_file)
            bad_before = len(errors)
            count = 0
            for index, record in enumerate(self.stream_records(data_file)):
                count += 1
                try:
                    samples = self.record_samples(record, index, data_file)
                except ValueError as exc:
                    error = DataError(str(exc), source=source, index=index)
                except DataError as exc:
                    error = exc
                else:
                    yield from samples
                    continue
                errors.append(error)
                self.skipped.append((source, index, error.reason))
            bad = len(errors) - bad_before
            if bad and self.on_bad_sample == "skip":
                logger.warning(
                    "%s: skipped %d of %d records; first: %s",
                    data_file,
                    bad,
                    count,
                    errors[bad_before],
                )
        if errors and self.on_bad_sample == "error":
            self.skipped = []
            first = errors[0]
            more = len(errors) - 1
            reason = first.reason
            if more:
                reason += (
                    f" (and {more} more bad record{'s' if more > 1 else ''}; "
                    "fix them or set on_bad_sample to 'skip')"
                )
            raise DataError(reason, source=first.source, index=first.index) from first

    def sample(
        self, data_file: Path, index: int, messages: list[Message], images: list[Path]
    ) -> Sample:
        """A sample of this dataset (label and chat template attached) from one record."""
        return Sample(
            messages=messages,
            images=images,
            source=str(data_file),
            index=index,
            dataset=self.label,
            chat_template=self.chat_template,
        )

    def __len__(self) -> int:
        return len(self.samples)

    @overload
    def __getitem__(self, item: int) -> Sample: ...

    @overload
    def __getitem__(self, item: slice) -> list[Sample]: ...

    def __getitem__(self, item: int | slice) -> Sample | list[Sample]:
        return self.samples[item]

    def __repr__(self) -> str:
        files = ", ".join(str(path) for path in self.data_files)
        return f"{type(self).__name__}([{files}], {len(self)} samples, {len(self.skipped)} skipped)"
