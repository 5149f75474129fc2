"""Tiny Qwen-VL fixtures: a random model, the generated tiny tokenizer, prompts and images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import paddle
import pytest
from mixcore_qwen_vl.configuration import QwenVLConfig, config_from_preset
from mixcore_qwen_vl.modeling import QwenVLForConditionalGeneration
from mixcore_qwen_vl.tokenization import QwenVLTokenizer, write_tiny_vocab

TINY = "qwen_vl/tiny"


@pytest.fixture(scope="session")
def tiny_vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vocab(tmp_path_factory.mktemp("tiny-vocab"))


@pytest.fixture
def tokenizer(tiny_vocab_dir: Path) -> QwenVLTokenizer:
    return QwenVLTokenizer.from_pretrained(str(tiny_vocab_dir))


@pytest.fixture(scope="session")
def shared_tokenizer(tiny_vocab_dir: Path) -> QwenVLTokenizer:
    """One tokenizer for property-based tests (Hypothesis reuses it across examples)."""
    return QwenVLTokenizer.from_pretrained(str(tiny_vocab_dir))


@pytest.fixture
def config() -> QwenVLConfig:
    return config_from_preset(TINY)


@pytest.fixture
def model(config: QwenVLConfig) -> QwenVLForConditionalGeneration:
    paddle.seed(2024)
    built = QwenVLForConditionalGeneration(config)
    built.eval()
    return built


@pytest.fixture
def make_images(config: QwenVLConfig) -> Callable[..., paddle.Tensor]:
    """Deterministic random images ``[n, 3, size, size]``; ``seed`` picks different pictures."""
    size = int(config.visual["image_size"])

    def make(n: int, seed: int = 0, size: int = size) -> paddle.Tensor:
        rng = np.random.default_rng(seed)
        return paddle.to_tensor(rng.standard_normal((n, 3, size, size)).astype("float32"))

    return make


@pytest.fixture
def image_prompt(tokenizer: QwenVLTokenizer, config: QwenVLConfig) -> Callable[..., list[int]]:
    """Token ids of ``before`` text, one image span per image, then ``after`` text."""

    def build(before: str = "Picture:", after: str = " What colour is the circle?", images=1):
        ids = tokenizer(before)["input_ids"]
        for _ in range(images):
            ids += tokenizer.image_span_ids(config.n_queries)
        return ids + tokenizer(after)["input_ids"]

    return build
