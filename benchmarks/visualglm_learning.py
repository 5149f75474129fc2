"""Does the tiny VisualGLM learn, does it look at the image, and does LoRA teach it something new?

1. `mixcore train` with examples/configs/visualglm_shapes_sft.json (tiny VisualGLM, random init,
   everything trained: shape and colour questions on generated pictures), then `mixcore infer`
   on the 200 held-out questions, and again with the images shuffled among them. Also the mean
   answer loss of the held-out questions with their own pictures and with each picture moved to
   a question whose answer differs.
2. `mixcore train` with examples/configs/visualglm_shapes_lora.json: LoRA on ChatGLM's attention
   and MLP (the default targets), the Q-Former and the tied embeddings trained in full, teaching
   "is the shape small or large?" from the SFT checkpoint; `mixcore infer --lora` on 200
   held-out size questions.
3. `mixcore merge-lora`, `mixcore infer` with the merged folder (same answers?), and the largest
   logit difference between base + adapter and the merged model.

Every step runs the real command in a subprocess. Run: `python benchmarks/visualglm_learning.py`
(about 20 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from blip2_learning import shuffled_copy
from learning import accuracy, max_logit_difference, mixcore

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
SFT_CONFIG, LORA_CONFIG = "visualglm_shapes_sft.json", "visualglm_shapes_lora.json"


def answer_losses(model: Path, test: Path) -> tuple[float, float]:
    """Mean answer loss of the test questions with their own pictures, and with each picture
    moved to the next question whose answer differs."""
    import dataclasses

    import paddle

    from mixcore.kit.collation import to_tensors
    from mixcore.registry import build_registry

    registry = build_registry()
    bundle = registry.hook.load_model(model_name="visualglm", source=str(model), options={})
    bundle.model.eval()
    samples = registry.hook.build_dataset(
        dataset_name="chatml_dataset", options={"data_files": test.name}, base_dir=str(test.parent)
    )
    answers = [s.messages[-1].content for s in samples]
    moved = []
    for n, sample in enumerate(samples):
        other = next(
            (n + k) % len(samples)
            for k in range(1, len(samples))
            if answers[(n + k) % len(samples)] != answers[n]
        )
        moved.append(dataclasses.replace(sample, images=samples[other].images))

    def mean_loss(batch_samples) -> float:
        total = 0.0
        for start in range(0, len(batch_samples), 50):
            features = [
                registry.hook.preprocess_sample(
                    model_name="visualglm", sample=s, bundle=bundle, max_length=64
                )
                for s in batch_samples[start : start + 50]
            ]
            batch = registry.hook.collate_batch(
                model_name="visualglm", features=features, bundle=bundle
            )
            with paddle.no_grad():
                total += float(bundle.model(**to_tensors(batch)).loss) * len(features)
        return total / len(batch_samples)

    return mean_loss(samples), mean_loss(moved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, help="keep outputs here (default: a temp folder)")
    parser.add_argument(
        "--reuse-sft", action="store_true", help="keep an SFT checkpoint already in --workdir"
    )
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mixcore-visualglm-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in (SFT_CONFIG, LORA_CONFIG):
        shutil.copy(CONFIGS / name, work / name)
    sft, lora, merged = (
        work / "output/visualglm_shapes_sft",
        work / "output/visualglm_shapes_lora",
        work / "merged",
    )
    shape_test = work / ".mixcore-data/shapes-demo/test.json"
    size_test = work / ".mixcore-data/shapes-size/test.json"

    if args.reuse_sft and (sft / "model.safetensors").is_file():
        sft_seconds = float("nan")
    else:
        sft_seconds = mixcore("train", "--config", SFT_CONFIG, cwd=work)
    mixcore(
        "infer", "--model", str(sft), "--data", str(shape_test), "--output", "sft.jsonl", cwd=work
    )
    sft_accuracy, sft_kinds = accuracy(work / "sft.jsonl")
    shuffled = shuffled_copy(shape_test)
    mixcore(
        "infer",
        "--model",
        str(sft),
        "--data",
        str(shuffled),
        "--output",
        "shuffled.jsonl",
        cwd=work,
    )
    shuffled_accuracy, _ = accuracy(work / "shuffled.jsonl")
    right_loss, moved_loss = answer_losses(sft, shape_test)

    lora_seconds = mixcore("train", "--config", LORA_CONFIG, cwd=work)
    mixcore(
        "infer",
        "--model",
        str(sft),
        "--data",
        str(size_test),
        "--output",
        "before.jsonl",
        cwd=work,
    )
    before, _ = accuracy(work / "before.jsonl")
    mixcore(
        "infer",
        "--lora",
        str(lora),
        "--data",
        str(size_test),
        "--output",
        "lora.jsonl",
        cwd=work,
    )
    lora_accuracy, _ = accuracy(work / "lora.jsonl")
    mixcore("merge-lora", "--lora", str(lora), "--output", str(merged), "--overwrite", cwd=work)
    mixcore(
        "infer",
        "--model",
        str(merged),
        "--data",
        str(size_test),
        "--output",
        "merged.jsonl",
        cwd=work,
    )
    same = sum(
        json.loads(a)["prediction"] == json.loads(b)["prediction"]
        for a, b in zip(
            (work / "lora.jsonl").read_text().splitlines(),
            (work / "merged.jsonl").read_text().splitlines(),
            strict=True,
        )
    )
    diff = max_logit_difference(
        lora, merged, sft, size_test, model_name="visualglm", max_length=64, float64=False
    )

    detail = ", ".join(f"{k!r}: {v:.1%}" for k, v in sorted(sft_kinds.items()))
    print(f"{'tiny VisualGLM':<38}{'train s':>9}{'accuracy':>10}  notes")
    print(
        f"{'full SFT from scratch: shape+colour':<38}{sft_seconds:>9.0f}{sft_accuracy:>10.1%}  {detail}"
    )
    print(f"{'  same questions, images shuffled':<38}{'':>9}{shuffled_accuracy:>10.1%}  chance 25%")
    print(
        f"{'LoRA on new type: size':<38}{lora_seconds:>9.0f}{lora_accuracy:>10.1%}  "
        f"before LoRA {before:.1%}"
    )
    print(
        f"held-out answer loss: {right_loss:.4f} with their pictures, {moved_loss:.4f} with "
        "pictures of other answers"
    )
    print(
        f"merged vs base+LoRA, max |logit diff| over 32 prompts in float32 (|logits| up to "
        f"{diff['scale']:.1f}): {diff['float32']:.2e}; same answers {same}/200"
    )
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()
