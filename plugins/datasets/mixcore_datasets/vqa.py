"""Reader of visual-question-answering records: an image, a question and its answer(s).

A VQA file is a JSON list of records (or a ``.jsonl`` file of them, one per line)::

    [{"image": "val2014/COCO_val2014_000000000042.jpg",
      "question": "What is the dog lying on?",
      "answer": "couch",                        # or "answers"; see below
      "question_id": 42000}]                    # optional, ignored like any other key

``answer`` (or ``answers``; a record gives one of the two) is a string, or the list of the
annotators' answers as VQA collects them (ten per question in VQA v2), whose entries are strings
or objects with an ``answer`` key (the layout of VQA v2's annotation files). A list trains on its
most common answer, ties going to the one given first, because a single target per question is
what supervised fine-tuning needs and the majority is what VQA's own accuracy rewards most.
Answers are compared and used whitespace-stripped.

The official VQA v2 release splits a split into two files instead: questions
(``{"questions": [{"image_id", "question", "question_id"}]}``) and annotations
(``{"annotations": [{"question_id", "answers": [{"answer"}, ...], ...}]}``), with images named
after their COCO id. Give the questions file as the data file, the annotations file as
``annotations_file`` and the image name as ``image_pattern`` (a ``str.format`` template over
``image_id``, e.g. ``"val2014/COCO_val2014_{image_id:012d}.jpg"``); each question then becomes a
record of the list form, with the index of the question in its file.

Each record becomes one sample: a user message ``"<image>\\n" + prompt_template.format(question=...)``
and the answer as the assistant reply. Image paths are relative to ``image_root`` and may not
leave it.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message, Sample
from mixcore.kit.files import read_json
from mixcore.kit.images import ImageResolver
from mixcore_datasets.base import (
    OnBadSample,
    RecordDataset,
    check_no_image,
    check_text,
    json_type,
    option_source,
    string_field,
    text_value,
)
from mixcore_datasets.record_files import read_document

__all__ = ["DEFAULT_PROMPT_TEMPLATE", "VqaDataset", "check_prompt_template", "majority_answer"]

#: The question, unchanged, is the user text unless the config gives ``prompt_template``.
DEFAULT_PROMPT_TEMPLATE = "{question}"

_BRACES_HINT = "write a literal brace as '{{' or '}}'"


def check_prompt_template(template: str) -> str:
    """Return ``template`` if it is a ``str.format`` template using only ``{question}``.

    Raises ``ValueError`` saying what is wrong: other fields (``{answer}``, ``{}``, ``{0}``),
    conversions or format specs, unbalanced braces, or no ``{question}`` at all (the question
    would never reach the model).
    """
    if not isinstance(template, str):
        raise ValueError(f"prompt_template must be a string, got {template!r}")
    check_text(template, "prompt_template")
    check_no_image(template, "prompt_template")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"prompt_template {template!r} is not a valid template ({exc}); {_BRACES_HINT}"
        ) from None
    fields = 0
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name != "question" or spec or conversion:
            field = "{" + name + (f"!{conversion}" if conversion else "")
            field += (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"prompt_template may only use the field {{question}}, found {field}; "
                + _BRACES_HINT
            )
        fields += 1
    if not fields:
        raise ValueError(
            f"prompt_template {template!r} has no {{question}}, so the model would never see "
            "the question"
        )
    return template


def majority_answer(answers: Sequence[str]) -> str:
    """The most common of ``answers``; among equally common ones, the first given."""
    if not answers:
        raise ValueError("no answers to choose from")
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    # dicts keep insertion order and max() returns the first maximal item: ties go to the first.
    return max(counts, key=counts.__getitem__)


def _answer_texts(record: dict[str, Any]) -> list[str]:
    """The record's answer(s), each checked and stripped."""
    keys = [key for key in ("answer", "answers") if key in record]
    if not keys:
        listed = ", ".join(sorted(map(str, record))) or "none"
        raise ValueError(f"record has no 'answer' or 'answers' (keys: {listed})")
    if len(keys) == 2:
        raise ValueError("record has both 'answer' and 'answers'; give one")
    key = keys[0]
    value = record[key]
    if isinstance(value, str):
        return [check_no_image(text_value(value, f"'{key}'").strip(), f"'{key}'")]
    if not isinstance(value, list):
        raise ValueError(
            f"'{key}' must be a string or a list of answers, got a JSON {json_type(value)}"
        )
    if not value:
        raise ValueError(f"'{key}' is an empty list")
    texts = []
    for n, entry in enumerate(value):
        what = f"'{key}' entry {n}"
        if isinstance(entry, dict):
            if "answer" not in entry:
                raise ValueError(f"{what} is an object without an 'answer' key")
            entry, what = entry["answer"], f"{what} 'answer'"
        texts.append(check_no_image(text_value(entry, what).strip(), what))
    return texts


class VqaDataset(RecordDataset):
    """Question-answer samples from VQA-style files, validated when the dataset is built.

    ``image_root`` is the folder image paths are relative to (default: each data file's
    folder); images are located and checked with :func:`~mixcore.kit.images.resolve_image` but
    not decoded. ``prompt_template`` turns the question into the user text (checked by
    :func:`check_prompt_template`). ``on_bad_sample`` and :attr:`skipped` work as in
    :class:`~mixcore_datasets.base.RecordDataset`.
    """

    def __init__(
        self,
        data_files: Iterable[Path],
        *,
        image_root: Path | None = None,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        annotations_file: Path | None = None,
        image_pattern: str | None = None,
        on_bad_sample: OnBadSample = "error",
        label: str = "",
        chat_template: dict[str, Any] | str | None = None,
    ) -> None:
        try:
            check_prompt_template(prompt_template)
        except ValueError as exc:
            raise DataError(str(exc), source=option_source(label, "prompt_template")) from None
        if image_root is not None and not Path(image_root).is_dir():
            raise DataError(
                f"image folder not found: {image_root}",
                source=option_source(label, "image_root"),
            )
        self.image_root = None if image_root is None else Path(image_root)
        self.prompt_template = prompt_template
        self.annotations = (
            None if annotations_file is None else _read_annotations(Path(annotations_file), label)
        )
        if image_pattern is not None:
            try:
                image_pattern.format(image_id=42)
            except (KeyError, IndexError, ValueError) as exc:
                raise DataError(
                    f"image_pattern {image_pattern!r} must be a str.format template with only "
                    f"{{image_id}} (e.g. 'COCO_val2014_{{image_id:012d}}.jpg'): {exc!r}",
                    source=option_source(label, "image_pattern"),
                ) from None
        self.image_pattern = image_pattern
        self.resolver = ImageResolver()
        super().__init__(
            data_files, on_bad_sample=on_bad_sample, label=label, chat_template=chat_template
        )

    def read_records(self, data_file: Path) -> list[Any]:
        data = read_document(data_file, "data file")
        if isinstance(data, dict) and "questions" in data:
            return self._official_records(data, data_file)
        if not isinstance(data, list):
            raise DataError(
                "a VQA file must hold a JSON list of {image, question, answer} records, "
                f"found a JSON {json_type(data)}",
                source=str(data_file),
            )
        return data

    def _official_records(self, data: dict[str, Any], data_file: Path) -> list[Any]:
        """The list-form records of a VQA v2 questions file joined with its annotations."""
        missing = [
            name
            for name, value in (
                ("annotations_file", self.annotations),
                ("image_pattern", self.image_pattern),
            )
            if value is None
        ]
        if missing:
            raise DataError(
                "this is a VQA v2 questions file; reading it needs the option(s) "
                + " and ".join(missing)
                + " (the annotations file with the answers, and the image file name "
                "pattern such as 'val2014/COCO_val2014_{image_id:012d}.jpg')",
                source=str(data_file),
            )
        questions = data["questions"]
        if not isinstance(questions, list):
            raise DataError(
                f"'questions' must be a list, found a JSON {json_type(questions)}",
                source=str(data_file),
            )
        assert self.annotations is not None and self.image_pattern is not None
        records: list[Any] = []
        for question in questions:
            if not isinstance(question, dict):
                records.append(question)  # reported, with its index, by record_samples
                continue
            record: dict[str, Any] = {"question": question.get("question")}
            qid, image_id = question.get("question_id"), question.get("image_id")
            if qid in self.annotations:
                record["answers"] = self.annotations[qid]
            if isinstance(image_id, int) and not isinstance(image_id, bool):
                record["image"] = self.image_pattern.format(image_id=image_id)
            records.append(record)
        return records

    def record_samples(self, record: Any, index: int, data_file: Path) -> list[Sample]:
        if not isinstance(record, dict):
            raise ValueError(
                "a record must be an object with 'image', 'question' and 'answer', "
                f"got a JSON {json_type(record)}"
            )
        ref = string_field(record, "image")
        question = check_no_image(string_field(record, "question").strip(), "'question'")
        answer = majority_answer(_answer_texts(record))
        root = self.image_root if self.image_root is not None else data_file.parent
        image = self.resolver(root, ref, source=str(data_file), index=index)
        prompt = self.prompt_template.format(question=question)
        messages = [
            Message("user", f"{IMAGE_PLACEHOLDER}\n{prompt}"),
            Message("assistant", answer),
        ]
        return [self.sample(data_file, index, messages, [image])]


def _read_annotations(path: Path, label: str) -> dict[Any, Any]:
    """``question_id`` -> annotator answers, from a VQA v2 annotations file."""
    data = read_json(path, "annotations file")
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise DataError(
            'a VQA v2 annotations file holds {"annotations": [{"question_id", "answers"}, ...]}',
            source=str(path),
        )
    answers: dict[Any, Any] = {}
    for n, entry in enumerate(annotations):
        if not isinstance(entry, dict) or "question_id" not in entry or "answers" not in entry:
            raise DataError(
                "an annotation must be an object with 'question_id' and 'answers'",
                source=str(path),
                index=n,
            )
        answers[entry["question_id"]] = entry["answers"]
    return answers
