"""Knowledge distillation against training the same student on the labels alone, measured in one run.

  .venv/bin/python bench/distill.py [--teacher DIR | --teacher-model gpt-micro --teacher-steps 400] [--steps 200]
                                    [--shapes 1x0,2x128]

A teacher is trained by the project (a preset with a 4k vocabulary on zh-news + zh-reviews, Ray Train + DeepSpeed
ZeRO-2, bf16-mixed, for twice the students' steps) unless `--teacher` names one. For each student shape (layers x
width; width 0 = the teacher's, which starts the student from the teacher's evenly spaced layers) two Ray Train runs
of the same student follow on the same data with the same seed and steps: distillation (alpha 0.5, temperature 2)
and its label-only twin (alpha 0). Reported per shape: parameters against the teacher, held-out perplexity of both
(the whole validation split), wall and training seconds, the step-time ratio (distillation / twin: the teacher's
forward is the extra cost) and batch-1 greedy decode speed of student and teacher, in PyTorch and in llama.cpp (f16
GGUF).
Targets: a student of <= 0.5x the teacher's parameters reaches >= 10% lower perplexity than its twin, decodes >=
1.6x faster than the teacher, and a distillation step costs <= 1.5x the twin's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minigpt_ray.compress.candidate import count_params, decode_tokens_per_s  # noqa: E402
from minigpt_ray.config import TrainJobConfig  # noqa: E402
from minigpt_ray.export import export_gguf  # noqa: E402
from minigpt_ray.export.llamacpp import LlamaCppModel, gguf_decode_tokens_per_s  # noqa: E402
from minigpt_ray.modeling.tokenizer import load_tokenizer  # noqa: E402
from minigpt_ray.training.trainer import run_training  # noqa: E402

PROMPT = "这家酒店的服务"


def base_config(output: Path, steps: int) -> TrainJobConfig:
    cfg = TrainJobConfig(output=str(output), sample_prompt="")
    cfg.data.sources = ["zh-news", "zh-reviews"]
    cfg.data.max_chars_per_source, cfg.data.block_size, cfg.data.val_fraction = 600_000, 128, 0.02
    t = cfg.train
    t.num_workers, t.micro_batch_size, t.max_steps, t.warmup_steps = 2, 16, steps, max(1, steps // 10)
    t.eval_every, t.checkpoint_every, t.log_every, t.eval_batches = steps, steps, 50, 0
    return cfg


def train_teacher(work: Path, preset: str, steps: int) -> Path:
    cfg = base_config(work / "teacher", steps)
    cfg.model.name, cfg.model.vocab_size, cfg.model.tokenizer_train_chars = preset, 4096, 1_000_000
    cfg.train.lr = 3e-3
    run_training(cfg.validate())
    return work / "teacher" / "model"


def train_student(work: Path, teacher: Path, shape: tuple[int, int], alpha: float, steps: int) -> dict:
    layers, width = shape
    cfg = base_config(work / f"student-{layers}x{width}-a{alpha:g}", steps)
    d = cfg.distill
    d.teacher, d.alpha, d.temperature = str(teacher), alpha, 2.0
    d.student_layers, d.student_hidden_size = layers, width
    cfg.train.lr = 3e-3 if width else 1e-3  # a random start takes the pretraining rate
    return run_training(cfg.validate()) | {"dir": work / Path(cfg.output).name / "model"}


def decode_speeds(model_dir: Path, work: Path, threads: int) -> dict:
    """Batch-1 greedy tokens/s in PyTorch (fp32) and in llama.cpp (f16 GGUF)."""
    from transformers import AutoModelForCausalLM

    prompt = load_tokenizer(str(model_dir))(PROMPT, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    speeds = {"params": count_params(model), "torch": decode_tokens_per_s(model, torch.tensor([prompt]), 64, 3)}
    gguf = export_gguf(model_dir, work / f"gguf-{model_dir.parent.name}", "f16")
    runtime = LlamaCppModel(gguf, max_sequences=1, threads=threads)
    try:
        speeds["llama.cpp"] = gguf_decode_tokens_per_s(runtime, prompt, 64, repeats=3)
    finally:
        runtime.close()
    return speeds


def teacher_perplexity(teacher_dir: Path, work: Path, steps: int) -> float:
    """The teacher on the students' validation split (their runs read the same text with its tokenizer)."""
    from transformers import AutoModelForCausalLM

    from minigpt_ray.modeling.evaluate import perplexity
    from minigpt_ray.training.prepare import prepare_run

    cfg = base_config(work / "probe", steps)
    cfg.distill.teacher, cfg.distill.student_layers = str(teacher_dir), 1
    blocks = torch.from_numpy(prepare_run(cfg.validate()).data.val).long()
    return perplexity(AutoModelForCausalLM.from_pretrained(teacher_dir).eval(), blocks)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in item.split("x")) for item in text.split(",")]


def report(teacher: dict, shape: tuple[int, int], kd: dict, twin: dict, speeds: dict) -> None:
    gain = 1 - kd["final_val_ppl"] / twin["final_val_ppl"]
    step_ratio = twin["steady_tokens_per_s"] / kd["steady_tokens_per_s"]
    print(f"\nstudent {shape[0]} layers x {shape[1] or 'teacher'} width: {speeds['params'] / teacher['params']:.2f}x")
    print("| model | params | val perplexity | wall s | train s | decode tok/s torch | decode tok/s llama.cpp |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| teacher | {teacher['params']:,} | {teacher['ppl']:.2f} | | | {teacher['torch']:.0f} | "
        f"{teacher['llama.cpp']:.0f} |"
    )
    for name, run in (("student, distilled", kd), ("student, labels only", twin)):
        print(
            f"| {name} | {speeds['params']:,} | {run['final_val_ppl']:.2f} | {run['wall_seconds']:.0f} | "
            f"{run['train_seconds']:.0f} | {speeds['torch']:.0f} | {speeds['llama.cpp']:.0f} |"
        )
    print(
        f"perplexity {gain:.1%} lower than the twin (target >= 10%); decode vs teacher "
        f"{speeds['torch'] / teacher['torch']:.2f}x torch, {speeds['llama.cpp'] / teacher['llama.cpp']:.2f}x "
        f"llama.cpp (target >= 1.6x); distillation step {step_ratio:.2f}x the twin's (target <= 1.5x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="", help="a trained teacher directory (default: train one)")
    parser.add_argument("--teacher-model", default="gpt-micro", help="preset of the teacher trained here")
    parser.add_argument("--teacher-steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=200, help="training steps of every student run")
    parser.add_argument("--shapes", default="1x0,2x128", help="student shapes, layers x width (0 = teacher's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minigpt-distill-"))
    teacher_dir = Path(args.teacher) if args.teacher else train_teacher(work, args.teacher_model, args.teacher_steps)
    teacher = decode_speeds(teacher_dir, work, args.threads)
    teacher["ppl"] = teacher_perplexity(teacher_dir, work, args.steps)
    for shape in parse_shapes(args.shapes):
        kd = train_student(work, teacher_dir, shape, 0.5, args.steps)
        twin = train_student(work, teacher_dir, shape, 0.0, args.steps)
        report(teacher, shape, kd, twin, decode_speeds(kd["dir"], work, args.threads))


if __name__ == "__main__":
    main()
