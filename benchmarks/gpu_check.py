"""GPU check: mixcore's training paths on one GPU, and the speed of a Qwen-VL-7B-shaped LoRA step.

On a machine with one CUDA GPU and a CUDA build of Paddle, run ``python benchmarks/gpu_check.py``.
Each stage runs in a process of its own (a fresh GPU, a time limit of its own), one after the
other, and the script ends with a table; the whole takes under 8 minutes on an H200.

Stages (what one GPU allows; several ranks on one GPU are not possible with NCCL, and sharding or
tensor/pipeline parallel over one rank is no parallelism at all, PaddleNLP turns it off):

* ``tiny-fp32``: ``qwen_vl/tiny`` full fine-tuning in float32, one process;
* ``tiny-bf16``: the same with ``bf16`` mixed precision;
* ``tiny-lora-bf16``: LoRA with ``bf16`` at AMP level O2;
* ``tiny-launch``: ``mixcore train --nproc-per-node 1``, through ``paddle.distributed.launch``
  (NCCL, a world of one), its log in ``output_dir/logs``;
* ``7b-lora-bf16``: the tiny preset's tokenizer on a model of Qwen-VL-Chat-7B's shapes (language
  model hidden 4096, 32 layers, 32 heads, MLP 22016 = 2 x 11008, vocabulary 151936; ViT-bigG-like
  vision tower of width 1664, 48 layers, 16 heads, 448-pixel images in 14-pixel patches; a
  256-query resampler), random weights (built in float32 by the preset path, cast to bf16 by
  AMP level O2 as PaddleMIX's LoRA recipe does), LoRA rank 8, timed over steps after warm-up.

Throughput counts the tokens the language model sees (image query tokens included, padding not).
Model FLOPs follow the usual estimate: ``6 x N x tokens`` for each transformer (the language model
over its tokens, the vision tower over its patches), plus attention's ``12 x layers x width x
context`` per token; MFU is that over the step time and the GPU's dense bf16 peak (``--peak-tflops``,
989 for an H200/H100 SXM). LoRA skips the weight gradients of frozen weights, so the hardware does
about 4N per token of the 6N counted; the table shows the 6N convention.

Without a GPU the script stops at once with a message (exit 2). Its arithmetic and configs are
plain functions (tests/train/test_gpu_check.py checks them on CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: H200 / H100 SXM dense bf16 tensor-core peak, TFLOP/s.
H200_BF16_PEAK_TFLOPS = 989.0

#: The fields of Qwen-VL-Chat-7B's preset (the qwen_vl plugin's ``qwen-vl/qwen-vl-chat-7b``)
#: that give its language model's shapes. They, and its vision sizes, are applied to the tiny
#: preset, whose generated tokenizer needs no download; the tokenizer's ids are all below the
#: vocabulary size, so the shapes are the 7B model's exactly.
QWEN_VL_7B_LLM_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "kv_channels",
    "intermediate_size",
    "seq_length",
    "max_position_embeddings",
)


def qwen_vl_7b_sizes() -> tuple[dict[str, Any], dict[str, Any]]:
    """(language-model fields, vision sizes) of the plugin's Qwen-VL-Chat-7B preset; the
    image token ids are the tokenizer's business and left out."""
    from mixcore_qwen_vl.configuration import PRESETS  # imports Paddle: only when running

    preset = PRESETS["qwen-vl/qwen-vl-chat-7b"]
    llm = {key: preset[key] for key in QWEN_VL_7B_LLM_FIELDS}
    return llm, {k: v for k, v in preset["visual"].items() if k != "image_start_id"}


STAGES = ("tiny-fp32", "tiny-bf16", "tiny-lora-bf16", "tiny-launch", "7b-lora-bf16")
#: Seconds each stage may take (start-up and model build included); the sum stays under 8 min.
STAGE_LIMITS = {
    "tiny-fp32": 50,
    "tiny-bf16": 50,
    "tiny-lora-bf16": 50,
    "tiny-launch": 70,
    "7b-lora-bf16": 240,
}


def qwen_vl_7b_overrides(tiny_visual: dict[str, Any]) -> dict[str, Any]:
    """``model_options.config_overrides`` that turn ``qwen_vl/tiny`` into 7B shapes; the tiny
    preset's image token ids (``tiny_visual["image_start_id"]``) are kept."""
    llm, visual = qwen_vl_7b_sizes()
    return {**llm, "visual": {**visual, "image_start_id": tiny_visual["image_start_id"]}}


def transformer_flops(params: float, tokens: float, layers: int, width: int, context: int) -> float:
    """Training FLOPs of a transformer over ``tokens``: ``6 N`` per token for its matrix
    weights ``params`` (forward 2N, backward 4N) plus attention's scores and weighted sums,
    ``12 x layers x width x context`` per token (forward and backward, no causal discount)."""
    return 6.0 * params * tokens + 12.0 * layers * width * context * tokens


@dataclass(frozen=True)
class StepShape:
    """What one training step computes: the model's sizes and what the batch holds."""

    llm_params: float  # matrix weights of the language model (embedding lookup excluded)
    llm_layers: int
    llm_width: int
    vision_params: float  # vision tower and resampler
    vision_layers: int
    vision_width: int
    patches_per_image: int

    def flops(self, tokens: float, images: float, context: int) -> float:
        """Model FLOPs of a step whose batch has ``tokens`` language-model tokens in rows of
        about ``context`` tokens, and ``images`` images."""
        llm = transformer_flops(self.llm_params, tokens, self.llm_layers, self.llm_width, context)
        patches = images * self.patches_per_image
        vision = transformer_flops(
            self.vision_params,
            patches,
            self.vision_layers,
            self.vision_width,
            self.patches_per_image,
        )
        return llm + vision


def mfu(flops: float, seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak."""
    return flops / seconds / (peak_tflops * 1e12)


def stage_config(stage: str, work: Path, tiny_visual: dict[str, Any]) -> dict[str, Any]:
    """The `mixcore train` config of ``stage`` (data generated under ``work``)."""
    seven_b = stage == "7b-lora-bf16"
    config: dict[str, Any] = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [{"name": "synthetic_shapes", "train_records": 256, "folder": "data"}],
        },
        "output_dir": str(work / stage),
        "per_device_train_batch_size": 16,
        "learning_rate": 1e-3,
        "max_steps": 20,
        "logging_steps": 5,
        "save_strategy": "no",
        "max_length": 128,
        "disable_tqdm": True,
        "seed": 1,
        "device": "gpu",
    }
    if "bf16" in stage:
        config["bf16"] = True
    if "lora" in stage:
        # PaddleMIX's published LoRA recipe: bf16 at AMP level O2 (the weights cast to bf16,
        # float32 master copies of the trained ones); tiny-bf16 keeps PaddleNLP's default O1.
        config.update(lora=True, lora_rank=8, fp16_opt_level="O2")
    if seven_b:
        config["model_options"] = {
            "random_init": True,
            "config_overrides": qwen_vl_7b_overrides(tiny_visual),
        }
        config.update(
            per_device_train_batch_size=4,
            max_length=512,
            max_steps=8,
            logging_steps=1,
            benchmark=True,  # no final save of 19 GB of random weights
        )
    return config


# -- running -------------------------------------------------------------------------------------


def gpu_problem() -> str | None:
    """Why this machine cannot run the check, or None. Reads Paddle's build first (no import),
    then asks Paddle for a device."""
    from mixcore.config.parallel_checks import paddle_build

    build = paddle_build()
    if build is None:
        return "Paddle is not installed"
    if build == "cpu":
        return (
            "the installed Paddle is a CPU build; install paddlepaddle-gpu (in place of "
            "paddlepaddle) on a machine with a CUDA GPU"
        )
    import paddle

    if paddle.device.cuda.device_count() < 1:
        return "Paddle has CUDA support but sees no GPU (check CUDA_VISIBLE_DEVICES, the driver)"
    return None


def run_stage(stage: str, work: Path, peak_tflops: float) -> dict[str, Any]:
    """Train ``stage`` in this process; the row of the table, as JSON-ready values."""
    import paddle

    from mixcore import hookimpl
    from mixcore.config import prepare_config
    from mixcore.registry import build_registry
    from mixcore.testing import make_plugin
    from mixcore.train.run import run_training

    counted = {"tokens": 0, "images": 0}

    @hookimpl(wrapper=True)
    def collate_batch(model_name, features, bundle):
        """Count each batch's real tokens and images (a hook wrapper)."""
        batch = yield
        counted["tokens"] += int(batch["attention_mask"].sum())
        images = batch.get("images")
        counted["images"] += int(images.shape[0]) if images is not None else 0
        return batch

    registry = build_registry([make_plugin("gpu_check_counter", collate_batch)])
    from mixcore_qwen_vl.configuration import PRESETS

    config = stage_config(stage, work, PRESETS["qwen_vl/tiny"]["visual"])
    prepared = prepare_config(config, registry, base_dir=work)
    warmup = 2 if stage.startswith("7b") else 5
    marks: dict[str, float] = {}

    from paddlenlp.trainer import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                paddle.device.synchronize()
                marks.update(
                    start=time.perf_counter(), **{f"at_{k}": v for k, v in counted.items()}
                )

    started = time.perf_counter()
    result = run_training(
        prepared, registry, base_dir=work, report=lambda line: None, callbacks=[Timer()]
    )
    paddle.device.synchronize()
    seconds = time.perf_counter() - marks["start"]
    steps = result.global_step - warmup
    tokens = counted["tokens"] - marks["at_tokens"]
    images = counted["images"] - marks["at_images"]
    row: dict[str, Any] = {
        "stage": stage,
        "status": "ok",
        "loss": result.train_loss,
        "steps": steps,
        "step_ms": 1000 * seconds / steps,
        "tokens_per_s": tokens / seconds,
        "wall_s": time.perf_counter() - started,
        "peak_memory_gib": paddle.device.cuda.max_memory_allocated() / 2**30,
    }
    rows = {name: trainable + frozen for name, trainable, frozen in result.parameter_rows}
    if stage.startswith("7b"):
        llm, visual = qwen_vl_7b_sizes()
        shape = StepShape(
            llm_params=rows["language_model"] - llm["vocab_size"] * llm["hidden_size"],
            llm_layers=llm["num_hidden_layers"],
            llm_width=llm["hidden_size"],
            vision_params=rows["vision"] + rows.get("adapter", 0),
            vision_layers=visual["layers"],
            vision_width=visual["width"],
            patches_per_image=(visual["image_size"] // visual["patch_size"]) ** 2,
        )
        context = int(tokens / max(steps * prepared["per_device_train_batch_size"], 1))
        flops = shape.flops(tokens, images, context)
        row.update(
            parameters=sum(rows.values()),
            mfu=mfu(flops, seconds, peak_tflops),
            tflops_per_s=flops / seconds / 1e12,
        )
    return row


def run_launch_stage(work: Path) -> dict[str, Any]:
    """``mixcore train --nproc-per-node 1``: Paddle's launcher, NCCL, one rank."""
    from mixcore_qwen_vl.configuration import PRESETS

    config = stage_config("tiny-launch", work, PRESETS["qwen_vl/tiny"]["visual"])
    work.mkdir(parents=True, exist_ok=True)
    path = work / "tiny-launch.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mixcore", "train", "--config", str(path), "--nproc-per-node", "1",
         "--json"],
        capture_output=True,
        text=True,
        timeout=STAGE_LIMITS["tiny-launch"] - 5,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"stage": "tiny-launch", "status": f"FAILED (exit {done.returncode})",
                "note": (done.stdout + done.stderr).strip().splitlines()[-1:]}  # fmt: skip
    summary: dict[str, Any] = {}
    lines = done.stdout.splitlines()
    for i in reversed(range(len(lines))):  # rank 0's JSON summary, among its echoed lines
        if lines[i] == "{":
            try:
                summary = json.JSONDecoder().raw_decode("\n".join(lines[i:]))[0]
                break
            except ValueError:
                continue
    logs = Path(config["output_dir"]) / "logs" / "workerlog.0"
    return {
        "stage": "tiny-launch",
        "status": "ok" if logs.is_file() else "ok (no workerlog.0?)",
        "loss": summary.get("train_loss"),
        "steps": summary.get("global_step"),
        "wall_s": wall,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a text table."""
    header = f"{'stage':<16}{'status':<22}{'loss':>8}{'steps':>6}{'step ms':>10}{'tokens/s':>12}"
    header += f"{'MFU (6N)':>10}{'TFLOP/s':>9}{'mem GiB':>9}{'wall s':>8}"
    lines = [header]

    def num(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    for row in rows:
        lines.append(
            f"{row['stage']:<16}{str(row['status'])[:21]:<22}{num(row, 'loss', '.3f'):>8}"
            f"{num(row, 'steps', 'd'):>6}{num(row, 'step_ms', '.1f'):>10}"
            f"{num(row, 'tokens_per_s', ',.0f'):>12}{num(row, 'mfu', '.1%'):>10}"
            f"{num(row, 'tflops_per_s', '.0f'):>9}{num(row, 'peak_memory_gib', '.1f'):>9}"
            f"{num(row, 'wall_s', '.0f'):>8}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", nargs="*", default=list(STAGES), choices=STAGES)
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_PEAK_TFLOPS)
    parser.add_argument("--work", type=Path, help="folder for data and runs (default: a temp)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # one stage, in-process
    parser.add_argument("--row", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    problem = gpu_problem()
    if problem:
        print(f"gpu_check: needs a CUDA GPU: {problem}", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="mixcore-gpu-check-"))
    if args.stage:  # a child: one stage, its row written as JSON
        row = (
            run_launch_stage(work)
            if args.stage == "tiny-launch"
            else run_stage(args.stage, work, args.peak_tflops)
        )
        args.row.write_text(json.dumps(row), encoding="utf-8")
        return 0
    rows = []
    started = time.perf_counter()
    for stage in args.stages:
        out = work / f"{stage}.row.json"
        command = [sys.executable, __file__, "--stage", stage, "--row", str(out),
                   "--work", str(work), "--peak-tflops", str(args.peak_tflops)]  # fmt: skip
        print(f"[{time.perf_counter() - started:5.0f}s] {stage} ...", flush=True)
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=STAGE_LIMITS[stage]
            )
            if done.returncode == 0 and out.is_file():
                rows.append(json.loads(out.read_text(encoding="utf-8")))
            else:
                tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
                rows.append({"stage": stage, "status": f"FAILED (exit {done.returncode})"})
                print("\n".join(f"    {line}" for line in tail), flush=True)
        except subprocess.TimeoutExpired:
            rows.append({"stage": stage, "status": f"TIMEOUT ({STAGE_LIMITS[stage]} s)"})
    print(format_table(rows))
    print(f"total {time.perf_counter() - started:.0f} s; peak {args.peak_tflops:.0f} TFLOP/s; "
          f"work folder {work}")  # fmt: skip
    return 0 if all(r["status"].startswith("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
