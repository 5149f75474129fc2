"""coco_caption: both COCO layouts become image + caption samples; bad records are located."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mixcore_datasets.coco import DEFAULT_CAPTION_PROMPT, CocoCaptionDataset

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message
from mixcore.kit.images import load_sample_images
from mixcore.registry import build_registry


@pytest.fixture(scope="module")
def registry():
    return build_registry(environ={"MIXCORE_PLUGINS": "datasets"})


@pytest.fixture
def coco(tmp_path, write_png) -> Path:
    """A COCO-like folder with two images, val2014/a.png (red) and val2014/b.png (blue)."""
    write_png(tmp_path / "val2014" / "a.png", color=(255, 0, 0))
    write_png(tmp_path / "val2014" / "b.png", color=(0, 0, 255))
    return tmp_path


def official(*annotations: dict, images: list | None = None) -> dict:
    if images is None:
        images = [
            {"id": 1, "file_name": "val2014/a.png", "height": 4, "width": 4},
            {"id": 2, "file_name": "val2014/b.png"},
        ]
    return {"info": {}, "images": images, "annotations": list(annotations)}


def captions_of(dataset) -> list[tuple[str, str]]:
    return [(s.images[0].name, s.messages[1].content) for s in dataset]


# --- layouts ---------------------------------------------------------------------------------


def test_official_layout_joins_annotations_to_images_by_id(coco, write_json):
    path = write_json(
        coco / "captions_val2014.json",
        official(
            {"image_id": 2, "id": 10, "caption": "A blue square."},
            {"image_id": 1, "id": 11, "caption": "A red square.\n"},
            {"image_id": 2, "id": 12, "caption": "Something blue. "},
        ),
    )
    dataset = CocoCaptionDataset([path], label="coco")
    assert captions_of(dataset) == [
        ("b.png", "A blue square."),
        ("a.png", "A red square."),
        ("b.png", "Something blue."),
    ]
    first = dataset[0]
    assert first.messages == [
        Message("user", f"{IMAGE_PLACEHOLDER}\n{DEFAULT_CAPTION_PROMPT}"),
        Message("assistant", "A blue square."),
    ]
    assert first.images == [coco / "val2014" / "b.png"]
    assert (first.source, first.index, first.dataset) == (str(path), 0, "coco")
    assert [s.index for s in dataset] == [0, 1, 2]


def test_list_layout_accepts_one_caption_or_several(coco, write_json):
    path = write_json(
        coco / "coco_karpathy_val.json",
        [
            {"image": "val2014/a.png", "caption": ["Red.", "A red block."], "image_id": "coco_1"},
            {"image": "val2014/b.png", "caption": "Blue."},
        ],
    )
    dataset = CocoCaptionDataset([path])
    assert captions_of(dataset) == [
        ("a.png", "Red."),
        ("a.png", "A red block."),
        ("b.png", "Blue."),
    ]
    assert [s.index for s in dataset] == [0, 0, 1]


def test_first_keeps_one_caption_per_image_across_records(coco, write_json):
    # The Karpathy train split repeats an image once per caption.
    path = write_json(
        coco / "train.json",
        [
            {"image": "val2014/a.png", "caption": "Red."},
            {"image": "val2014/a.png", "caption": "Also red."},
            {"image": "val2014/b.png", "caption": ["Blue.", "Also blue."]},
        ],
    )
    dataset = CocoCaptionDataset([path], captions="first")
    assert captions_of(dataset) == [("a.png", "Red."), ("b.png", "Blue.")]


def test_first_falls_back_to_the_next_good_caption_when_skipping(coco, write_json):
    path = write_json(
        coco / "captions.json",
        official(
            {"image_id": 1, "caption": "  "},
            {"image_id": 1, "caption": "Red."},
            {"image_id": 1, "caption": "Red again."},
        ),
    )
    dataset = CocoCaptionDataset([path], captions="first", on_bad_sample="skip")
    assert captions_of(dataset) == [("a.png", "Red.")]
    assert dataset.skipped == [(str(path), 0, "'caption' is empty")]


def test_prompt_and_chat_template_reach_every_sample(coco, write_json):
    path = write_json(coco / "c.json", [{"image": "val2014/a.png", "caption": "Red."}])
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    (sample,) = CocoCaptionDataset([path], prompt="Caption:", chat_template=template)
    assert sample.messages[0].content == f"{IMAGE_PLACEHOLDER}\nCaption:"
    assert sample.chat_template == template


def test_image_root_holds_the_images_when_annotations_live_elsewhere(coco, write_json):
    path = write_json(
        coco / "annotations" / "captions.json", official({"image_id": 1, "caption": "Red."})
    )
    (sample,) = CocoCaptionDataset([path], image_root=coco)
    assert sample.images == [coco / "val2014" / "a.png"]
    with pytest.raises(DataError, match=r"captions\.json record 0: image file not found"):
        CocoCaptionDataset([path])  # default root: the annotation file's folder


def test_images_without_captions_are_ignored(coco, write_json):
    path = write_json(coco / "test.json", official({"image_id": 2, "caption": "Blue."}))
    assert captions_of(CocoCaptionDataset([path])) == [("b.png", "Blue.")]


def test_images_are_located_up_front_but_decoded_only_on_demand(coco, write_json):
    (coco / "val2014" / "broken.png").write_bytes(b"not a png")
    path = write_json(coco / "c.json", [{"image": "val2014/broken.png", "caption": "x"}])
    (sample,) = CocoCaptionDataset([path])
    with pytest.raises(DataError, match=r"c\.json record 0: image .*broken\.png: not an image"):
        load_sample_images(sample)


# --- bad records -----------------------------------------------------------------------------

BAD_LIST_RECORDS = [
    pytest.param("val2014/a.png", "a JSON string", id="record-not-object"),
    pytest.param({"caption": "Red."}, "record has no 'image' (keys: caption)", id="no-image"),
    pytest.param({"image": "val2014/a.png"}, "record has no 'caption'", id="no-caption"),
    pytest.param({"image": "val2014/a.png", "caption": ""}, "'caption' is empty", id="empty"),
    pytest.param({"image": "val2014/a.png", "caption": []}, "empty list", id="empty-list"),
    pytest.param(
        {"image": "val2014/a.png", "caption": ["ok", 3]},
        "'caption' entry 1 must be a string, got a JSON number",
        id="caption-list-number",
    ),
    pytest.param(
        {"image": "val2014/a.png", "caption": {"text": "x"}},
        "'caption' must be a string or a list of strings, got a JSON object",
        id="caption-object",
    ),
    pytest.param({"image": 5, "caption": "x"}, "'image' must be a string", id="image-number"),
    pytest.param({"image": "val2014/zz.png", "caption": "x"}, "image file not found", id="missing"),
    pytest.param({"image": "../outside.png", "caption": "x"}, "uses '..'", id="traversal"),
    pytest.param(
        {"image": "val2014/a.png", "caption": "bad \ud800 text"},
        "'caption' is not valid UTF-8 text: it holds a lone surrogate U+D800 at character 4",
        id="lone-surrogate",
    ),
    pytest.param(
        {"image": "val2014/\udc80.png", "caption": "x"}, "not valid UTF-8", id="surrogate-path"
    ),
    pytest.param(
        {"image": "val2014/a.png", "caption": "look <image>"},
        "contains '<image>'",
        id="placeholder",
    ),
]


@pytest.mark.parametrize(("record", "reason"), BAD_LIST_RECORDS)
def test_bad_list_record_is_a_located_data_error(coco, write_json, record, reason):
    (coco.parent / "outside.png").write_bytes(b"")
    good = {"image": "val2014/b.png", "caption": "Blue."}
    path = coco / "list.json"
    path.write_text(json.dumps([good, record]), encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        CocoCaptionDataset([path])
    assert str(excinfo.value).startswith(f"{path} record 1: ")
    assert reason in str(excinfo.value)


BAD_ANNOTATIONS = [
    pytest.param(
        {"image_id": 7, "caption": "x"}, "image id 7, which 'images' does not list", id="id"
    ),
    pytest.param({"image_id": "1", "caption": "x"}, "image id '1', which", id="id-wrong-type"),
    pytest.param({"image_id": True, "caption": "x"}, "image id True, which", id="id-bool"),
    pytest.param({"caption": "x"}, "annotation has no 'image_id'", id="no-image-id"),
    pytest.param({"image_id": 1}, "record has no 'caption'", id="no-caption"),
    pytest.param({"image_id": 1, "caption": None}, "'caption' must be a string", id="null"),
    pytest.param(
        {"image_id": 3, "caption": "x"}, "image id 3 (images[2]) has no 'file_name'", id="fn"
    ),
    pytest.param(
        {"image_id": 4, "caption": "x"}, "'file_name' of image id 4 (images[3]) is empty", id="fn0"
    ),
    pytest.param(["not", "an", "object"], "an annotation must be an object", id="not-object"),
]


@pytest.mark.parametrize(("annotation", "reason"), BAD_ANNOTATIONS)
def test_bad_annotation_is_a_located_data_error(coco, write_json, annotation, reason):
    images = [
        {"id": 1, "file_name": "val2014/a.png"},
        {"id": 2, "file_name": "val2014/b.png"},
        {"id": 3},
        {"id": 4, "file_name": ""},
    ]
    path = write_json(
        coco / "ann.json", official({"image_id": 2, "caption": "ok"}, annotation, images=images)
    )
    with pytest.raises(DataError) as excinfo:
        CocoCaptionDataset([path])
    assert str(excinfo.value).startswith(f"{path} record 1: ")
    assert reason in str(excinfo.value)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"annotations": []}, "needs 'images'"),
        ({"images": {}, "annotations": []}, "'images' must be a list, got a JSON object"),
        ({"images": [5], "annotations": []}, "images[0] must be an object"),
        ({"images": [{"file_name": "a.png"}], "annotations": []}, "images[0] needs an integer"),
        (
            {
                "images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}],
                "annotations": [],
            },
            "images[1] repeats id 1 of images[0]",
        ),
        ({"info": {}}, "found an object with keys ['info']"),
        ("captions", "found a JSON string"),
    ],
)
def test_a_broken_file_is_always_raised(coco, write_json, data, reason):
    path = write_json(coco / "broken.json", data)
    with pytest.raises(DataError) as excinfo:
        CocoCaptionDataset([path], on_bad_sample="skip")
    assert str(excinfo.value).startswith(f"{path}: ")
    assert reason in str(excinfo.value)


def test_missing_image_is_reported_for_every_caption_of_it(coco, write_json):
    os.remove(coco / "val2014" / "a.png")
    path = write_json(
        coco / "c.json",
        official(
            {"image_id": 1, "caption": "Red."},
            {"image_id": 2, "caption": "Blue."},
            {"image_id": 1, "caption": "Red again."},
        ),
    )
    with pytest.raises(DataError, match=r"c\.json record 0: image file not found.*1 more bad"):
        CocoCaptionDataset([path])
    dataset = CocoCaptionDataset([path], on_bad_sample="skip")
    assert captions_of(dataset) == [("b.png", "Blue.")]
    assert [(index, reason.split(":")[0]) for _, index, reason in dataset.skipped] == [
        (0, "image file not found"),
        (2, "image file not found"),
    ]


def test_symlinked_image_leaving_the_image_root_is_refused(coco, tmp_path_factory, write_png):
    outside = write_png(tmp_path_factory.mktemp("elsewhere") / "secret.png")
    (coco / "val2014" / "link.png").symlink_to(outside)
    path = coco / "c.json"
    path.write_text(json.dumps([{"image": "val2014/link.png", "caption": "x"}]))
    with pytest.raises(DataError, match=r"is a symlink .* outside the data folder"):
        CocoCaptionDataset([path])


def test_prompt_with_an_image_placeholder_is_refused(coco):
    with pytest.raises(DataError, match=r"^dataset caps option prompt: the prompt contains"):
        CocoCaptionDataset([], prompt="<image> what?", label="caps")


# --- through the plugin ----------------------------------------------------------------------


def test_plugin_builds_coco_caption_with_config_relative_paths(registry, coco, write_json):
    write_json(coco / "ann" / "captions.json", official({"image_id": 1, "caption": "Red."}))
    options = {
        "data_files": "ann/captions.json",
        "image_root": ".",
        "prompt": "What is shown?",
        "captions": "first",
        "chat_template": {"conversation": ["{{user}}", "{{bot}}"]},
        "label": "coco#0",
        "on_bad_sample": "error",
    }
    samples = registry.hook.build_dataset(
        dataset_name="coco_caption", options=options, base_dir=str(coco)
    )
    (sample,) = samples
    assert sample.images == [coco / "val2014" / "a.png"]
    assert sample.messages[0].content == f"{IMAGE_PLACEHOLDER}\nWhat is shown?"
    assert sample.chat_template == {
        "system": None,
        "conversation": ["{{user}}", "{{bot}}"],
        "query": None,
    }
    assert sample.dataset == "coco#0"


def test_plugin_reports_a_missing_image_root_by_option(registry, coco, write_json):
    write_json(coco / "c.json", [])
    with pytest.raises(DataError, match=r"^dataset coco_caption option image_root: image folder"):
        registry.hook.build_dataset(
            dataset_name="coco_caption",
            options={"data_files": "c.json", "image_root": "nope"},
            base_dir=str(coco),
        )
