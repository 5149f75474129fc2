"""qwen_vl keeps the contract of a mixcore model: the conformance kit passes on the tiny preset."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from mixcore.api.records import IMAGE_PLACEHOLDER, Message, Sample
from mixcore.testing import CHECKS, check_model_conformance


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
        # Text only, between two image samples: its segment of a pack contributes no image.
        Sample([Message("user", "Say hi."), Message("assistant", "hi there")], index=1),
        Sample(
            [
                Message("user", f"{IMAGE_PLACEHOLDER} and {IMAGE_PLACEHOLDER}\nColours?"),
                Message("assistant", "blue and red"),
                Message("user", "Sure?"),
                Message("assistant", "yes"),
            ],
            [blue, red],
            index=2,
        ),
    ]


def test_qwen_vl_passes_every_conformance_check(tmp_path):
    report = check_model_conformance(
        "qwen_vl",
        "qwen_vl/tiny",
        options={"random_init": True},
        samples=_samples(tmp_path),
        workdir=tmp_path / "work",
    )
    report.raise_for_failures()
    # qwen_vl claims packing, lora and inference, so nothing is skipped.
    assert report.names == list(CHECKS) and report.skipped == {}
    assert "without reading images" in report["sample_length"].message
    assert report["generation_learns"].message.startswith("answered 'red'")


def test_the_plugin_guide_conformance_example_passes(tmp_path):
    guide = Path(__file__).resolve().parents[2] / "docs" / "plugin-guide.md"
    section = guide.read_text(encoding="utf-8").split("\n## Conformance checks\n", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    namespace: dict = {}
    exec(compile(example, str(guide), "exec"), namespace)
    namespace["test_qwen_vl_keeps_the_model_contract"](tmp_path)
