"""Every record layout users already have is read as it is, into the right Samples, and trains.

Each case writes a few records in one published layout (with PNGs drawn by Pillow), reads them
through the real registry's ``build_dataset`` and checks the messages and images, then runs
``mixcore train --dry-run`` on them with the tiny Qwen-VL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mixcore.api.records import IMAGE_PLACEHOLDER as IMG
from mixcore.api.records import Message
from mixcore.registry import build_registry
from mixcore.testing import run_cli


def u(text: str) -> Message:
    return Message("user", text)


def a(text: str) -> Message:
    return Message("assistant", text)


def s(text: str) -> Message:
    return Message("system", text)


def write_records(path: Path, records: list[Any]) -> Path:
    """``records`` as a JSON list, or one per line for a ``.jsonl`` name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records), encoding="utf-8")
    return path


# Each case: (folder, write_png) -> (dataset entry, expected [(messages, image paths)]).
Case = Callable[[Path, Callable[..., Path]], tuple[dict[str, Any], list[tuple[list, list]]]]


def llava_instruct(root: Path, png) -> Any:
    """LLaVA-Instruct-150K / ShareGPT4V: human/gpt turns, one image, <image> before the text."""
    png(root / "coco" / "train2017" / "000000033471.jpg.png")
    records = [
        {
            "id": "000000033471",
            "image": "coco/train2017/000000033471.jpg.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is the bus?"},
                {"from": "gpt", "value": "White and red."},
                {"from": "human", "value": "Where is it going?"},
                {"from": "gpt", "value": "Downtown."},
            ],
        }
    ]
    write_records(root / "llava_instruct_150k.json", records)
    image = root / "coco" / "train2017" / "000000033471.jpg.png"
    expected = [
        (
            [
                u(f"{IMG}\nWhat colour is the bus?"),
                a("White and red."),
                u("Where is it going?"),
                a("Downtown."),
            ],
            [image],
        )
    ]
    return {"name": "chatml_dataset", "data_files": "llava_instruct_150k.json"}, expected


def llava_mix665k(root: Path, png) -> Any:
    """LLaVA-1.5 mix665k: <image> after the text, and text-only records beside image ones."""
    png(root / "gqa" / "images" / "2354786.png")
    records = [
        {
            "id": "2354786",
            "image": "gqa/images/2354786.png",
            "conversations": [
                {"from": "human", "value": "Is the sky dark?\n<image>"},
                {"from": "gpt", "value": "Yes"},
            ],
        },
        {
            "id": "i6IyJda_0",
            "model": "",
            "conversations": [
                {"from": "human", "value": "Write a haiku about rain."},
                {"from": "gpt", "value": "Soft rain on the roof."},
            ],
        },
    ]
    write_records(root / "llava_v1_5_mix665k.json", records)
    expected = [
        ([u(f"Is the sky dark?\n{IMG}"), a("Yes")], [root / "gqa" / "images" / "2354786.png"]),
        ([u("Write a haiku about rain."), a("Soft rain on the roof.")], []),
    ]
    return {"name": "chatml_dataset", "data_files": "llava_v1_5_mix665k.json"}, expected


def sharegpt4v_with_image_root(root: Path, png) -> Any:
    """ShareGPT4V's layout, its images in a folder apart from the data file (image_root)."""
    png(root / "images" / "sam" / "sa_1.png")
    records = [
        {
            "id": "sa_1",
            "image": "sam/sa_1.png",
            "conversations": [
                {"from": "human", "value": "What do you see happening in this image?\n<image>"},
                {"from": "gpt", "value": "A long, detailed caption."},
            ],
        }
    ]
    write_records(root / "data" / "share-captioner_coco_lcs_sam_1246k.json", records)
    entry = {
        "name": "chatml_dataset",
        "data_files": "data/share-captioner_coco_lcs_sam_1246k.json",
        "image_root": "images",
    }
    expected = [
        (
            [u(f"What do you see happening in this image?\n{IMG}"), a("A long, detailed caption.")],
            [root / "images" / "sam" / "sa_1.png"],
        )
    ]
    return entry, expected


def llamafactory_sharegpt(root: Path, png) -> Any:
    """LLaMA-Factory's sharegpt image form: an images list and a system key."""
    png(root / "mllm_demo_data" / "1.png")
    png(root / "mllm_demo_data" / "2.png")
    records = [
        {
            "conversations": [
                {"from": "human", "value": "<image><image>Who are they?"},
                {"from": "gpt", "value": "Two players."},
            ],
            "system": "Answer briefly.",
            "images": ["mllm_demo_data/1.png", "mllm_demo_data/2.png"],
        }
    ]
    write_records(root / "mllm_demo.json", records)
    images = [root / "mllm_demo_data" / "1.png", root / "mllm_demo_data" / "2.png"]
    expected = [([s("Answer briefly."), u(f"{IMG}{IMG}Who are they?"), a("Two players.")], images)]
    return {
        "name": "chatml_dataset",
        "data_files": "mllm_demo.json",
        "format": "sharegpt",
    }, expected


def paddlemix_qwen_vl(root: Path, png) -> Any:
    """PaddleMIX's Qwen-VL fine-tuning records: user/assistant, Picture 1: <img>path</img>."""
    png(root / "imgs" / "demo.png")
    records = [
        {
            "id": "identity_0",
            "conversations": [
                {"from": "user", "value": "Picture 1: <img>imgs/demo.png</img>\nWhat is it?"},
                {"from": "assistant", "value": "A demo picture."},
            ],
        }
    ]
    write_records(root / "qwen_vl_sft.json", records)
    expected = [
        ([u(f"Picture 1: {IMG}\nWhat is it?"), a("A demo picture.")], [root / "imgs" / "demo.png"])
    ]
    return {"name": "chatml_dataset", "data_files": "qwen_vl_sft.json"}, expected


def datacopilot_llava_convert(root: Path, png) -> Any:
    """DataCopilot's llava_convert output: [human, gpt] pairs, an absolute image path."""
    image = png(root / "valid_images" / "a.png")
    records = [
        {
            "image": str(image),
            "conversations": [["<image>\nWhat shape?", "A square."], ["Its colour?", ""]],
        }
    ]
    write_records(root / "converted.json", records)
    entry = {"name": "chatml_dataset", "data_files": "converted.json", "image_root": "valid_images"}
    expected = [([u(f"{IMG}\nWhat shape?"), a("A square."), u("Its colour?"), a("")], [image])]
    return entry, expected


def datacopilot_mix_schema(root: Path, png) -> Any:
    """DataCopilot's MIX schema: images as [{id, url}], marks <image>0</image>, images null."""
    png(root / "pics" / "x.png")
    records = [
        {
            "id": 7,
            "images": [{"id": 0, "url": "pics/x.png"}],
            "conversations": [
                {"from": "user", "value": "<image>0</image>\nDescribe it."},
                {"from": "assistant", "value": "A grey tile."},
            ],
        },
        {
            "id": 8,
            "images": None,
            "conversations": [
                {"from": "user", "value": "Say hi."},
                {"from": "assistant", "value": "Hi."},
            ],
        },
    ]
    write_records(root / "mix.json", records)
    expected = [
        ([u(f"{IMG}\nDescribe it."), a("A grey tile.")], [root / "pics" / "x.png"]),
        ([u("Say hi."), a("Hi.")], []),
    ]
    return {"name": "chatml_dataset", "data_files": "mix.json"}, expected


def messages_images_jsonl(root: Path, png) -> Any:
    """ms-swift / LLaMA-Factory messages + images, as JSON Lines."""
    png(root / "img" / "cat.png")
    records = [
        {
            "messages": [
                {"role": "system", "content": "You are a vet."},
                {"role": "user", "content": "<image>What animal is this?"},
                {"role": "assistant", "content": "A cat."},
            ],
            "images": ["img/cat.png"],
        },
        {
            "messages": [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi"},
            ]
        },
    ]
    write_records(root / "swift_messages.jsonl", records)
    expected = [
        (
            [s("You are a vet."), u(f"{IMG}What animal is this?"), a("A cat.")],
            [root / "img" / "cat.png"],
        ),
        ([u("Hello"), a("Hi")], []),
    ]
    return {"name": "chatml_dataset", "data_files": "swift_messages.jsonl"}, expected


def swift_query_response(root: Path, png) -> Any:
    """ms-swift's query/response records with history pairs."""
    png(root / "img" / "dog.png")
    records = [
        {
            "system": "Be short.",
            "history": [["<image>What is it?", "A dog."]],
            "query": "What colour?",
            "response": "Brown.",
            "images": ["img/dog.png"],
        },
        {"query": "2+2?", "response": "4"},
    ]
    write_records(root / "swift_query.jsonl", records)
    expected = [
        (
            [s("Be short."), u(f"{IMG}What is it?"), a("A dog."), u("What colour?"), a("Brown.")],
            [root / "img" / "dog.png"],
        ),
        ([u("2+2?"), a("4")], []),
    ]
    return {"name": "chatml_dataset", "data_files": "swift_query.jsonl"}, expected


def paddlemix_chatml_jsonl(root: Path, png) -> Any:
    """PaddleMIX's chatml pairs, as JSON Lines."""
    png(root / "images" / "a.png")
    records = [{"conversations": [["<img>images/a.png</img>\nWhat is it?", "A square."]]}]
    write_records(root / "train.jsonl", records)
    expected = [([u(f"{IMG}\nWhat is it?"), a("A square.")], [root / "images" / "a.png"])]
    return {"name": "chatml_dataset", "data_files": "train.jsonl"}, expected


PROMPT = "Describe the image in one sentence."


def coco_karpathy(root: Path, png) -> Any:
    """Karpathy's dataset_coco.json, with split selecting train and restval."""
    for name in ("COCO_train2014_1.png", "COCO_val2014_2.png", "COCO_val2014_3.png"):
        png(root / "coco" / ("train2014" if "train" in name else "val2014") / name)
    data = {
        "dataset": "coco",
        "images": [
            {
                "filepath": "train2014",
                "filename": "COCO_train2014_1.png",
                "split": "train",
                "imgid": 0,
                "sentences": [{"raw": "A red square.", "tokens": ["a", "red", "square"]}],
            },
            {
                "filepath": "val2014",
                "filename": "COCO_val2014_2.png",
                "split": "restval",
                "sentences": [{"raw": "A blue one. "}, {"raw": "Blue."}],
            },
            {
                "filepath": "val2014",
                "filename": "COCO_val2014_3.png",
                "split": "test",
                "sentences": [{"raw": "Held out."}],
            },
        ],
    }
    (root / "dataset_coco.json").write_text(json.dumps(data), encoding="utf-8")
    entry = {
        "name": "coco_caption",
        "data_files": "dataset_coco.json",
        "image_root": "coco",
        "split": ["train", "restval"],
    }
    user = u(f"{IMG}\n{PROMPT}")
    first = root / "coco" / "train2014" / "COCO_train2014_1.png"
    second = root / "coco" / "val2014" / "COCO_val2014_2.png"
    expected = [
        ([user, a("A red square.")], [first]),
        ([user, a("A blue one.")], [second]),
        ([user, a("Blue.")], [second]),
    ]
    return entry, expected


def coco_caption_jsonl(root: Path, png) -> Any:
    """LAVIS-style {image, caption} records, as JSON Lines."""
    png(root / "val2014" / "x.png")
    write_records(root / "coco_karpathy_val.jsonl", [{"image": "val2014/x.png", "caption": "X."}])
    entry = {"name": "coco_caption", "data_files": "coco_karpathy_val.jsonl"}
    return entry, [([u(f"{IMG}\n{PROMPT}"), a("X.")], [root / "val2014" / "x.png"])]


def vqa_jsonl_with_image_root(root: Path, png) -> Any:
    """VQA records as JSON Lines, images under an image_root."""
    png(root / "coco" / "val2014" / "q.png")
    records = [{"image": "val2014/q.png", "question": "What shape?", "answers": ["cube", "cube"]}]
    write_records(root / "vqa" / "val.jsonl", records)
    entry = {"name": "vqa", "data_files": "vqa/val.jsonl", "image_root": "coco"}
    return entry, [([u(f"{IMG}\nWhat shape?"), a("cube")], [root / "coco" / "val2014" / "q.png"])]


CASES: dict[str, Case] = {
    case.__name__: case
    for case in (
        llava_instruct,
        llava_mix665k,
        sharegpt4v_with_image_root,
        llamafactory_sharegpt,
        paddlemix_qwen_vl,
        datacopilot_llava_convert,
        datacopilot_mix_schema,
        messages_images_jsonl,
        swift_query_response,
        paddlemix_chatml_jsonl,
        coco_karpathy,
        coco_caption_jsonl,
        vqa_jsonl_with_image_root,
    )
}


def build(entry: dict[str, Any], base: Path):
    options = {key: value for key, value in entry.items() if key != "name"}
    return build_registry().hook.build_dataset(
        dataset_name=entry["name"], options=options, base_dir=str(base)
    )


@pytest.mark.parametrize("case", CASES)
def test_format_is_read_into_samples(tmp_path, write_png, case):
    entry, expected = CASES[case](tmp_path, write_png)
    samples = list(build(entry, tmp_path))
    assert [(sample.messages, sample.images) for sample in samples] == expected


@pytest.mark.parametrize("case", CASES)
def test_format_passes_train_dry_run(tmp_path, write_png, case):
    entry, _ = CASES[case](tmp_path, write_png)
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {"train": [entry]},
        "output_dir": "out",
        "max_length": 128,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    result = run_cli(["train", "--config", str(path), "--dry-run", "--json"], entry_points=True)
    assert result.exit_code == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout[result.stdout.index("{\n") :])
    # Every sample was checked (its text encoded, its images decoded) as training would.
    assert summary["train_checked"] == len(build(entry, tmp_path)) > 0
    assert not (tmp_path / "out").exists()
