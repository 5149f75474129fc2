"""Does the tiny Qwen-VL learn? Full SFT, then LoRA on a question type it never saw, then merge.

1. `mixcore train` with examples/configs/qwen_vl_shapes_sft.json (random init, shape and colour
   questions on generated pictures), then `mixcore infer` on 200 held-out questions.
2. `mixcore train` with examples/configs/qwen_vl_shapes_lora.json: LoRA on the language model plus
   a fully trained resampler, teaching "where is the shape?" from the SFT checkpoint; then
   `mixcore infer --lora` on 200 held-out position questions.
3. `mixcore merge-lora`, `mixcore infer` with the merged checkpoint (same answers?), and the
   largest logit difference between base + adapter and the merged model.

Every step runs the real command in a subprocess. Run: `python benchmarks/learning.py`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"


def mixcore(*args: str, cwd: Path | None = None) -> float:
    """Run the real command in a subprocess; its seconds, or exit with its error output."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "mixcore", *args], capture_output=True, text=True, cwd=cwd
    )
    if result.returncode:
        sys.exit(f"mixcore {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def accuracy(preds: Path) -> tuple[float, dict[str, float]]:
    from mixcore.kit.scoring import exact_match

    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    hits, totals = Counter(), Counter()
    for row in rows:
        kind = row["prompt"].strip().split("\n")[-1]
        totals[kind] += 1
        hits[kind] += exact_match(row["prediction"], row["reference"])
    overall = sum(hits.values()) / len(rows)
    return overall, {k: hits[k] / totals[k] for k in totals}


def max_logit_difference(
    lora: Path,
    merged: Path,
    base: Path,
    data: Path,
    model_name: str = "qwen_vl",
    max_length: int = 128,
    float64: bool = True,
) -> dict[str, float]:
    import numpy as np
    import paddle
    from paddlenlp.peft import LoRAModel

    from mixcore.kit.collation import to_tensors
    from mixcore.registry import build_registry

    registry = build_registry()
    load = registry.hook.load_model
    adapted = LoRAModel.from_pretrained(
        load(model_name=model_name, source=str(base), options={}).model, str(lora)
    )
    adapted.eval()
    bundle = load(model_name=model_name, source=str(merged), options={})
    bundle.model.eval()
    samples = registry.hook.build_dataset(
        dataset_name="chatml_dataset", options={"data_files": data.name}, base_dir=str(data.parent)
    )
    features = [
        registry.hook.preprocess_sample(
            model_name=model_name, sample=s, bundle=bundle, max_length=max_length
        )
        for s in samples[:32]
    ]
    batch = to_tensors(
        registry.hook.collate_batch(model_name=model_name, features=features, bundle=bundle)
    )
    batch.pop("labels")
    with paddle.no_grad():
        unmerged = adapted(**batch)[0].numpy()  # x @ W + (x @ A) @ B * scale, in float32
        merged_logits = bundle.model(**batch)[0].numpy()
        if not float64:  # a model that cannot run in float64 (PaddleNLP's ChatGLM keeps
            # float32 rotary tables)
            return {
                "float32": float(np.abs(unmerged - merged_logits).max()),
                "scale": float(np.abs(merged_logits).max()),
            }
        # Both again in float64: what the stored weights mean, without float32's forward noise.
        batch64 = {**batch, "images": batch["images"].astype("float64")}
        adapted.to(dtype="float64")
        bundle.model.to(dtype="float64")
        exact = adapted(**batch64)[0].numpy()
        merged64 = bundle.model(**batch64)[0].numpy()
    return {
        "float32": float(np.abs(unmerged - merged_logits).max()),
        "float32 noise": float(np.abs(unmerged - exact).max()),
        "float64": float(np.abs(exact - merged64).max()),
        "scale": float(np.abs(merged_logits).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, help="keep outputs here (default: a temp folder)")
    parser.add_argument(
        "--reuse-sft", action="store_true", help="keep an SFT checkpoint already in --workdir"
    )
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mixcore-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("qwen_vl_shapes_sft.json", "qwen_vl_shapes_lora.json"):
        shutil.copy(CONFIGS / name, work / name)
    sft, lora, merged = (
        work / "output/qwen_vl_shapes_sft",
        work / "output/qwen_vl_shapes_lora",
        work / "merged",
    )
    shape_test = work / ".mixcore-data/shapes-demo/test.json"
    position_test = work / ".mixcore-data/shapes-position/test.json"

    rows = []
    if args.reuse_sft and (sft / "model.safetensors").is_file():
        seconds = float("nan")
    else:
        seconds = mixcore("train", "--config", str(work / "qwen_vl_shapes_sft.json"))
    mixcore(
        "infer", "--model", str(sft), "--data", str(shape_test), "--output", str(work / "sft.jsonl")
    )
    overall, by_kind = accuracy(work / "sft.jsonl")
    rows.append(("full SFT from scratch: shape+colour", seconds, overall, by_kind))

    seconds = mixcore("train", "--config", str(work / "qwen_vl_shapes_lora.json"))
    mixcore(
        "infer",
        "--model",
        str(sft),
        "--data",
        str(position_test),
        "--output",
        str(work / "before.jsonl"),
    )
    before, _ = accuracy(work / "before.jsonl")
    mixcore(
        "infer",
        "--lora",
        str(lora),
        "--data",
        str(position_test),
        "--output",
        str(work / "lora.jsonl"),
    )
    overall, by_kind = accuracy(work / "lora.jsonl")
    rows.append(("LoRA on new type: position", seconds, overall, by_kind))

    mixcore("merge-lora", "--lora", str(lora), "--output", str(merged))
    mixcore(
        "infer",
        "--model",
        str(merged),
        "--data",
        str(position_test),
        "--output",
        str(work / "merged.jsonl"),
    )
    same = sum(
        json.loads(a)["prediction"] == json.loads(b)["prediction"]
        for a, b in zip(
            (work / "lora.jsonl").read_text().splitlines(),
            (work / "merged.jsonl").read_text().splitlines(),
            strict=True,
        )
    )
    diff = max_logit_difference(lora, merged, sft, position_test)

    print(f"{'run':<40}{'train s':>9}{'accuracy':>10}  per question")
    for name, secs, acc, kinds in rows:
        detail = ", ".join(f"{k!r}: {v:.1%}" for k, v in sorted(kinds.items()))
        print(f"{name:<40}{secs:>9.0f}{acc:>10.1%}  {detail}")
    print(f"position accuracy before LoRA: {before:.1%} (the SFT model never saw the question)")
    print(
        f"merged vs base+LoRA, max |logit diff| over 32 prompts (|logits| up to "
        f"{diff['scale']:.1f}): {diff['float64']:.2e} evaluated in float64, {diff['float32']:.2e} "
        f"in float32 (float32's own error on base+LoRA: {diff['float32 noise']:.2e}); "
        f"same answers {same}/200"
    )
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()
