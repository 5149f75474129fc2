"""A deterministic synthetic visual-question-answering dataset of drawn shapes.

Each image shows one shape (circle, square, triangle, diamond) in one colour at one size and
position on a white background. Questions come in several types with one-word answers, so exact
match scoring works; a type left out of training (say ``position``) lets a later fine-tuning test
teach a question the model never saw. The generator exists so that tests and benchmarks can show
that a model *learns* (accuracy rises) without downloading any data.

Everything is derived from the seed: the same seed gives byte-identical JSON files and
pixel-identical images, and no image (file or attribute combination) is shared between splits.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "COLORS",
    "FORMATS",
    "POSITIONS",
    "QUESTIONS",
    "SHAPES",
    "SIZES",
    "ShapeSpec",
    "captions",
    "draw_shape",
    "generate_shapes_dataset",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

#: Colour names and their RGB fill; far apart so that no answer is ambiguous.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
}

#: Half the shape's extent as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.1, "large": 0.2}

#: Shape centre as fractions (x, y) of the image side.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
}

#: Question type -> (question text, attribute of :class:`ShapeSpec` that answers it).
QUESTIONS: dict[str, tuple[str, str]] = {
    "shape": ("What shape is in the picture?", "shape"),
    "color": ("What color is the shape?", "color"),
    "size": ("Is the shape small or large?", "size"),
    "position": ("Where is the shape in the picture: left, right, top or bottom?", "position"),
}

BACKGROUND = (255, 255, 255)

#: File layouts :func:`generate_shapes_dataset` writes: chatml conversations, COCO captions
#: (``{images, annotations}``, two captions per image) or a VQA list (three annotator answers).
FORMATS = ("chatml", "coco", "vqa")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ShapeSpec:
    """What one image shows; ``dx``/``dy`` shift the shape a little so images differ."""

    shape: str
    color: str
    size: str
    position: str
    dx: int = 0
    dy: int = 0


def _jitter(image_size: int) -> int:
    return max(1, image_size // 20)


def draw_shape(spec: ShapeSpec, image_size: int = 56) -> Image.Image:
    """Draw ``spec`` on a white ``image_size`` square (RGB), without anti-aliasing.

    Hard edges keep the fill colour exact, so a test can read the answer back from the pixels.
    """
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    fx, fy = POSITIONS[spec.position]
    cx = round(fx * image_size) + spec.dx
    cy = round(fy * image_size) + spec.dy
    r = round(SIZES[spec.size] * image_size)
    fill = COLORS[spec.color]
    if spec.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif spec.shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif spec.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif spec.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}; known: {', '.join(SHAPES)}")
    return image


def _all_specs(image_size: int) -> list[ShapeSpec]:
    j = _jitter(image_size)
    offsets = range(-j, j + 1)
    return [
        ShapeSpec(shape, color, size, position, dx, dy)
        for shape, color, size, position, dx, dy in product(
            SHAPES, COLORS, SIZES, POSITIONS, offsets, offsets
        )
    ]


def _check_question_types(question_types: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    types = tuple(question_types)
    if not types:
        raise ValueError("question_types is empty")
    unknown = [t for t in types if t not in QUESTIONS]
    if unknown:
        raise ValueError(f"unknown question types {unknown}; known: {', '.join(QUESTIONS)}")
    if len(set(types)) != len(types):
        raise ValueError(f"question_types has duplicates: {list(types)}")
    return types


def _values(attribute: str) -> tuple[str, ...]:
    return {"shape": SHAPES, "color": tuple(COLORS), "size": tuple(SIZES)}.get(
        attribute, tuple(POSITIONS)
    )


def captions(spec: ShapeSpec) -> list[str]:
    """Two captions of a drawn shape, worded differently, as COCO has several per image."""
    side = {"left": "on the left", "right": "on the right", "top": "at the top"}.get(
        spec.position, "at the bottom"
    )
    return [
        f"A {spec.size} {spec.color} {spec.shape} {side}.",
        f"There is a {spec.color} {spec.shape} {side} of the picture.",
    ]


def generate_shapes_dataset(
    out_dir: Path,
    *,
    seed: int,
    n_train: int,
    n_val: int,
    n_test: int,
    image_size: int = 56,
    question_types: tuple[str, ...] | list[str] = ("shape", "color"),
    format: str = "chatml",
) -> dict[str, Path]:
    """Write a shapes VQA dataset and return ``{"train": path, "val": path, "test": path}``.

    Images go to ``out_dir/images/<split>_<n>.png``. With ``format="chatml"`` each split is a
    chatml file (``out_dir/<split>.json``) whose records hold one exchange,
    ``["<img>images/train_00000.png</img>\\nWhat shape is in the picture?", "circle"]``, plus a
    ``meta`` object (the drawn attributes and the question type) that readers ignore and
    evaluation scripts use. ``"coco"`` writes COCO captions files instead (two captions per
    image) and ``"vqa"`` a VQA list (the same questions, three annotator answers of which two
    are right). Question types rotate through ``question_types`` record by record,
    so each type gets an even share.

    Attribute combinations (shape, colour, size, position and a small offset) are drawn without
    replacement across all splits, which is what keeps splits disjoint; a ``ValueError`` says so
    when more images are requested than a given ``image_size`` has distinct combinations.
    """
    if format not in FORMATS:
        raise ValueError(f"unsupported format {format!r}; supported: {', '.join(FORMATS)}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, count in counts.items():
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"n_{split} must be a non-negative integer, got {count!r}")
    types = _check_question_types(question_types)
    specs = _all_specs(image_size)
    total = sum(counts.values())
    if total > len(specs):
        raise ValueError(
            f"{total} images requested but image_size={image_size} allows only {len(specs)} "
            "distinct ones; use a larger image_size or fewer images"
        )

    rng = random.Random(seed)
    chosen = rng.sample(specs, total)
    images_dir = Path(out_dir) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    paths: dict[str, Path] = {}
    start = 0
    for split in SPLITS:
        split_specs = chosen[start : start + counts[split]]
        start += counts[split]
        records = []
        for n, spec in enumerate(split_specs):
            name = f"images/{split}_{n:05d}.png"
            draw_shape(spec, image_size).save(Path(out_dir) / name, format="PNG")
            qtype = types[n % len(types)]
            question, attribute = QUESTIONS[qtype]
            answer = getattr(spec, attribute)
            meta = {**asdict(spec), "question_type": qtype}
            if format == "chatml":
                records.append(
                    {"conversations": [[f"<img>{name}</img>\n{question}", answer]], "meta": meta}
                )
            elif format == "vqa":
                # Three annotators: two agree, one says something else, as VQA data goes.
                other = next(v for v in _values(attribute) if v != answer)
                records.append(
                    {
                        "image": name,
                        "question": question,
                        "answers": [answer, other, answer],
                        "question_id": n,
                    }
                )
            else:
                records.append({"id": n, "file_name": name, "spec": spec})
        data: object = records
        if format == "coco":
            data = {
                "images": [{"id": r["id"], "file_name": r["file_name"]} for r in records],
                "annotations": [
                    {"id": 2 * r["id"] + k, "image_id": r["id"], "caption": caption}
                    for r in records
                    for k, caption in enumerate(captions(r["spec"]))
                ],
            }
        path = Path(out_dir) / f"{split}.json"
        text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
        path.write_bytes(text.encode("utf-8"))
        paths[split] = path
    return paths
