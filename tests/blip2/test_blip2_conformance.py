"""blip2 keeps the contract of a mixcore model, with either language model: the conformance kit
passes on the tiny presets (OPT decoder-only, T5 encoder-decoder)."""

from __future__ import annotations

import pytest
from PIL import Image

from mixcore.api.records import IMAGE_PLACEHOLDER, Message, Sample
from mixcore.testing import check_model_conformance


def _samples(folder):
    red, blue = folder / "red.png", folder / "blue.png"
    Image.new("RGB", (40, 40), (220, 30, 30)).save(red)
    Image.new("RGB", (40, 40), (30, 30, 220)).save(blue)
    return [
        Sample(
            [Message("user", f"{IMAGE_PLACEHOLDER}\nWhat colour?"), Message("assistant", "red")],
            [red],
            index=0,
        ),
        Sample([Message("user", "Say hi."), Message("assistant", "hi there")], index=1),
        Sample(
            [
                Message("user", f"{IMAGE_PLACEHOLDER}\nWhat colour?"),
                Message("assistant", "blue"),
                Message("user", "Sure?"),
                Message("assistant", "yes"),
            ],
            [blue],
            index=2,
        ),
    ]


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_blip2_passes_every_conformance_check_it_claims(family, tmp_path):
    report = check_model_conformance(
        "blip2",
        "blip2/tiny",
        # A random tiny LM cannot be steered by the Q-Former alone in 60 steps: train it all.
        options={"random_init": True, "language_model": family, "frozen": []},
        samples=_samples(tmp_path),
        workdir=tmp_path / "work",
        atol=1e-5,  # the LoRA merge round trip, as the issue asks
    )
    report.raise_for_failures()
    # No packing claimed (see docs/models/blip2.md), so only that check is skipped.
    assert list(report.skipped) == ["packed_equals_unpacked"]
    assert "without reading images" in report["sample_length"].message
    assert report["generation_learns"].message.startswith("answered 'red'")
