"""VisualGLM fixtures: the generated tiny tokenizer, the tiny model and a picture."""

from __future__ import annotations

import pytest
from PIL import Image

from mixcore.api.records import IMAGE_PLACEHOLDER, Message, Sample


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from mixcore_visualglm.tokenization import load_tokenizer, write_tiny_chatglm_tokenizer

    folder = tmp_path_factory.mktemp("visualglm-vocab")
    write_tiny_chatglm_tokenizer(folder)
    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def tiny_bundle():
    import paddle
    from mixcore_visualglm.plugin import plugin

    paddle.seed(0)
    bundle = plugin.load("visualglm/tiny", {"random_init": True, "frozen": []})
    bundle.model.eval()
    return bundle


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (220, 30, 30)).save(path)
    return path


def question(picture, answer: str | None = "red", text: str = "What colour?") -> Sample:
    messages = [Message("user", f"{IMAGE_PLACEHOLDER}\n{text}")]
    if answer is not None:
        messages.append(Message("assistant", answer))
    return Sample(messages, [picture], index=7, source="data.json")
