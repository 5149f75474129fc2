"""The tiny LLaVA example passes the checks every mixcore model must pass.

Depends on ``mixcore.testing.check_model_conformance`` (pre-shifted labels, ``sample_length``
equal to the preprocessed length, packed loss equal to unpacked, save/load and LoRA-merge round
trips), which lands separately: until it does, the test is marked as an expected failure and not
run; once it exists the marker is inert and the test runs and must pass.
"""

from __future__ import annotations

import pytest

from mixcore import testing
from mixcore.api import Message, Sample

needs_conformance_api = pytest.mark.xfail(
    not hasattr(testing, "check_model_conformance"),
    reason="needs mixcore.testing.check_model_conformance (the conformance checks)",
    run=False,
)


def qa(picture, n, colour, question, answer):
    messages = [Message("user", f"<image>{question}"), Message("assistant", answer)]
    return Sample(messages, images=[picture(f"p{n}", colour)], source="conformance", index=n)


@needs_conformance_api
def test_tiny_llava_passes_the_model_conformance_checks(tiny_llava, picture, tmp_path):
    samples = [
        qa(picture, 0, (220, 30, 30), "What color is the shape?", "red"),
        qa(picture, 1, (30, 160, 50), "Describe the image.", "a green square on white"),
        qa(picture, 2, (30, 70, 220), "Is it small or large?", "small"),
        Sample(  # text only, two turns
            [
                Message("user", "Hello there."),
                Message("assistant", "yes"),
                Message("user", "Which one?"),
                Message("assistant", "the blue one"),
            ],
            source="conformance",
            index=3,
        ),
    ]
    report = testing.check_model_conformance(
        "tiny_llava",
        "tiny_llava/tiny",
        options={"random_init": True},
        samples=samples,
        workdir=tmp_path / "conformance",
        plugins=[("tiny_llava", tiny_llava)],
    )
    report.raise_for_failures()
