"""A tiny ChatGLM-6B tokenizer, generated into a folder and loaded by PaddleNLP's
``ChatGLMTokenizer`` from its files.

PaddleNLP 2.8.1's ``ChatGLMTokenizer`` reads one sentencepiece model, ``ice_text.model``, and
does ChatGLM's own text handling around it: a newline becomes the piece ``<n>``, a tab
``<|tab|>``, a run of 2 to 80 spaces ``<|blank_N|>`` (longest first) before sentencepiece sees
the text, and decoding turns them back. Ids are the sentencepiece ids plus ``num_image_tokens``
(20000 for the first ChatGLM-6B release, 0 since v1.1 and in this tokenizer's config).

The generated model keeps the real tokenizer's layout where it matters: ``<unk>`` 0, ``<s>`` 1,
``</s>`` 2, ``<pad>`` 3 (ChatGLM-6B's ``pad_token_id``), ``<n>`` 4, then ChatGLM's special
symbols ``[MASK]`` ``[gMASK]`` ``[sMASK]`` ``<sop>`` ``<eop>`` (bos and eos of PaddleNLP's
tokenizer), ``<|tab|>``, the 79 blank tokens and VisualGLM's ``<img>`` / ``</img>`` (single
pieces here; the image slots between them are filled by the model), the 256 byte pieces (so
any text encodes without ``<unk>``) and pieces learned by BPE from a small corpus: the synthetic
shapes data in VisualGLM's prompt form ``<img></img>问：{question}\\n答：``, its answers and
captions, common English and a little Chinese. Generation is deterministic (the same bytes
every time) and takes well under a second.

ChatGLM-6B ends an encoded prompt with ``[gMASK] <sop>`` (``build_inputs_with_special_tokens``
appends both, and the answer plus ``<eop>`` when a second sequence is given).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixcore.api.errors import UsageError
from mixcore.kit import shapes_vocabulary as vocabulary

__all__ = [
    "GMASK_TOKEN",
    "IMAGE_END",
    "IMAGE_START",
    "MAX_BLANK_LENGTH",
    "NEWLINE_TOKEN",
    "SPECIAL_SYMBOLS",
    "TINY_CHATGLM_VOCAB_SIZE",
    "TOKENIZER_FILE",
    "ChatGLMSpecialIds",
    "blank_token",
    "load_tokenizer",
    "special_ids",
    "tiny_corpus",
    "write_tiny_chatglm_tokenizer",
]

#: The sentencepiece model PaddleNLP's ``ChatGLMTokenizer`` reads.
TOKENIZER_FILE = "ice_text.model"
#: How many ids the generated tokenizer has (``len(tokenizer)``).
TINY_CHATGLM_VOCAB_SIZE = 1024
#: The longest run of spaces that is one token (PaddleNLP's ``max_blank_length``).
MAX_BLANK_LENGTH = 80

NEWLINE_TOKEN = "<n>"
TAB_TOKEN = "<|tab|>"
MASK_TOKEN = "[MASK]"
GMASK_TOKEN = "[gMASK]"
SMASK_TOKEN = "[sMASK]"
SOP_TOKEN = "<sop>"
EOP_TOKEN = "<eop>"
IMAGE_START = "<img>"
IMAGE_END = "</img>"


def blank_token(length: int) -> str:
    """ChatGLM's token for a run of ``length`` (2 to 80) spaces."""
    return f"<|blank_{length}|>"


#: Pieces that are always whole, in id order after ``<pad>``.
SPECIAL_SYMBOLS: tuple[str, ...] = (
    NEWLINE_TOKEN,
    MASK_TOKEN,
    GMASK_TOKEN,
    SMASK_TOKEN,
    SOP_TOKEN,
    EOP_TOKEN,
    TAB_TOKEN,
    *(blank_token(n) for n in range(2, MAX_BLANK_LENGTH + 1)),
    IMAGE_START,
    IMAGE_END,
)

_CONFIG_FILE = "tokenizer_config.json"
_SPECIAL_TOKENS_FILE = "special_tokens_map.json"

# --- the corpus ------------------------------------------------------------------------------

#: The generated shapes data's words come from :mod:`mixcore.kit.shapes_vocabulary`.

#: VisualGLM's prompt around a question (newline as ChatGLM's ``<n>``).
_PROMPT = IMAGE_START + IMAGE_END + "问：{q}" + NEWLINE_TOKEN + "答："

_ENGLISH = """
the be to of and a in that have I it for not on with he as you do at this but his by from they
we say her she or an will my one all would there their what so up out if about who get which go
me when make can like time no just him know take people into year your good some could them see
other than then now look only come its over think also back after use two how our work first
image photo picture shows show here object colour color shape size position where many much big
little center middle above below under near next beside between behind front side corner
white black orange purple pink brown gray dark light round flat tall short long wide yes no
answer question describe caption please tell name man woman dog cat car tree house sky water
"""
_CHINESE = (
    "问：这张图片里有什么？",
    "答：一个红色的圆形。",
    "图片中的形状是什么颜色？",
    "这个形状在图片的左边、右边、上面还是下面？",
    "请描述这张图片。",
    "形状是大的还是小的？",
    "你好，我是一个视觉语言模型。",
)
_NUMBERS = " ".join(str(n) for n in range(0, 21))
_PUNCTUATION = ". , ? ! : ; ' \" ( ) - / % & + = # @ * [ ] ， 。 ？ ！ ： ； 、"


def _synthetic_lines() -> Iterator[str]:
    for question in vocabulary.QUESTIONS:
        yield _PROMPT.format(q=question)
        for answer in vocabulary.answers():
            yield _PROMPT.format(q=question) + answer
            yield answer  # an answer tokenized alone (as VisualGLM encodes its targets)
    for shape in vocabulary.SHAPES:
        for color in vocabulary.COLORS:
            for size in vocabulary.SIZES:
                for side in vocabulary.SIDES:
                    yield f"A {size} {color} {shape} {side}."
                    yield f"There is a {color} {shape} {side} of the picture."


def tiny_corpus() -> list[str]:
    """The training text, in a fixed order, as sentencepiece sees it (newlines already
    ``<n>``): the synthetic data in VisualGLM's prompt form (which dominates the counts, so its
    words become single tokens), English words, a little Chinese, numbers and punctuation."""
    lines = list(_synthetic_lines())
    words = _ENGLISH.split()
    for chunk in range(0, len(words), 12):
        line = " ".join(words[chunk : chunk + 12])
        lines += [line, line.capitalize()]
    lines += [*_CHINESE, *_CHINESE, _NUMBERS, _PUNCTUATION]
    return lines


# --- writing and loading ---------------------------------------------------------------------


def write_tiny_chatglm_tokenizer(folder: str | Path) -> Path:
    """Write the tiny ChatGLM tokenizer (``ice_text.model``, ``tokenizer_config.json``,
    ``special_tokens_map.json``) into ``folder`` (created if needed); returns the folder."""
    import sentencepiece as spm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus()),
        model_writer=model,
        model_type="bpe",
        vocab_size=TINY_CHATGLM_VOCAB_SIZE,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        pad_piece="<pad>",
        user_defined_symbols=list(SPECIAL_SYMBOLS),
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    (folder / TOKENIZER_FILE).write_bytes(model.getvalue())
    specials = {
        "bos_token": SOP_TOKEN,
        "eos_token": EOP_TOKEN,
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": MASK_TOKEN,
    }
    config = {
        "tokenizer_class": "ChatGLMTokenizer",
        **specials,
        "end_token": "</s>",
        "gmask_token": GMASK_TOKEN,
        "num_image_tokens": 0,
        "do_lower_case": False,
        "remove_space": False,
        "padding_side": "left",
        "model_max_length": 2048,
    }
    _write_json(folder / _CONFIG_FILE, config)
    _write_json(folder / _SPECIAL_TOKENS_FILE, specials)
    return folder


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def load_tokenizer(folder: str | Path) -> Any:
    """PaddleNLP's ``ChatGLMTokenizer`` from the files in ``folder`` (nothing is downloaded)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such tokenizer folder")
    if not (folder / TOKENIZER_FILE).is_file():
        # PaddleNLP would take the folder for a hub name and try to download; mixcore never does.
        raise UsageError(
            f"{folder} has no {TOKENIZER_FILE}: the ChatGLM tokenizer's sentencepiece model must "
            "be in the checkpoint folder"
        )
    from paddlenlp.transformers import ChatGLMTokenizer

    return ChatGLMTokenizer.from_pretrained(str(folder))


@dataclass(frozen=True)
class ChatGLMSpecialIds:
    """The ids ChatGLM's inputs are built from. ``smask`` (``[sMASK]``, which ChatGLM-6B never
    uses and no text encodes to) is free to mark image slots."""

    gmask: int
    mask: int
    smask: int
    sop: int
    eop: int
    pad: int
    unk: int
    newline: int


def special_ids(tokenizer: Any) -> ChatGLMSpecialIds:
    """The special ids of a ChatGLM tokenizer; a :class:`UsageError` naming any it lacks."""
    names = {
        "gmask": GMASK_TOKEN,
        "mask": MASK_TOKEN,
        "smask": SMASK_TOKEN,
        "sop": SOP_TOKEN,
        "eop": EOP_TOKEN,
        "pad": "<pad>",
        "newline": NEWLINE_TOKEN,
    }
    unk = tokenizer.unk_token_id
    ids = {field: tokenizer.convert_tokens_to_ids(token) for field, token in names.items()}
    missing = [names[field] for field, value in ids.items() if value is None or value == unk]
    if missing:
        raise UsageError(f"the ChatGLM tokenizer has no {', '.join(missing)} token")
    return ChatGLMSpecialIds(unk=int(unk), **{k: int(v) for k, v in ids.items()})
