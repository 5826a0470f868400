"""The pipeline's report: report.md plus PNGs, from the stages' own output files. Pure Python + matplotlib, no Ray.

Every number in the report is read from what the stages wrote (metrics.json, pareto.json, the pipeline state),
so the report cannot drift from the runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from minigpt_ray.outputs import atomic_write_text
from minigpt_ray.sweep.pareto import best_student, served, served_lines
from minigpt_ray.web.pages import runs_data, runs_page


def plot_losses(metrics: dict, title: str, path: Path) -> None:
    """Training loss (mean over each logging window) and validation loss (each evaluation) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    curve = metrics.get("train_curve") or []
    if curve:
        ax.plot([s for s, _ in curve], [loss for _, loss in curve], label="training loss", color="#1c7ed6")
    history = metrics.get("history") or []
    ax.plot(
        [h["step"] for h in history], [h["val_loss"] for h in history], "o-", label="validation loss", color="#e8590c"
    )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _training_section(name: str, metrics: dict, png: str) -> list[str]:
    return [
        f"### {name}",
        "",
        f"`{metrics['model']}`: {metrics['steps']} steps, {metrics['train_tokens']:,} tokens, "
        f"{metrics['num_workers']} workers, ZeRO-{metrics['zero_stage']} {metrics['precision']}; validation "
        f"loss {metrics['initial_val_loss']:.3f} → {metrics['final_val_loss']:.3f} (perplexity "
        f"{metrics['initial_val_ppl']:.1f} → {metrics['final_val_ppl']:.1f}); {metrics['tokens_per_s']:,.0f} "
        f"tokens/s, MFU {metrics['mfu']:.1%}."
        + (
            f" LoRA r={metrics['lora_r']}: {metrics['trainable_params']:,} of {metrics['params']:,} parameters "
            "trained; adapter in `adapter/`, merged model in `model/`."
            if metrics.get("lora_r")
            else ""
        ),
        "",
        f"![{name} loss]({png})",
        "",
    ]


def _sweep_section(pareto: dict) -> list[str]:
    lines = [
        "### Compression sweep",
        "",
        "![Pareto front](pareto.png)",
        "",
        "| candidate | perplexity | × base | served by | served MB | × base | served decode tok/s | × base |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in pareto["front"]:
        lines.append(
            f"| {row['label']} | {served(row, 'served_perplexity'):.3f} | {row.get('served_ppl_ratio', 1):.3f} | "
            f"{row.get('served_runtime', 'torch')} | {served(row, 'served_mb'):.3f} | "
            f"{row.get('served_bytes_ratio', 1):.3f} | {served(row, 'served_tokens_per_s'):.0f} | "
            f"{row.get('served_decode_ratio', 1):.2f} |"
        )
    winner = pareto.get("winner")
    lines += [
        "",
        f"Winner ({pareto['constraint']}): **{winner['label']}**, perplexity {winner['perplexity']:.3f}, "
        f"{winner['size_mb']:.3f} MB."
        if winner
        else "No candidate met the constraint.",
        *(served_lines(winner)[1:] if winner else []),
        "",
    ]
    return lines


def _student_section(pareto: dict) -> list[str]:
    """The fine-tuned model (the teacher) against the best student distilled from it, both as served."""
    student = best_student(pareto["trials"])
    if student is None:
        return []
    teacher = pareto["baseline"]
    lines = [
        "### Distilled student",
        "",
        f"The best student the sweep distilled from the fine-tuned model: **{student['label']}**.",
        "",
        "| model | params | served MB | served perplexity | served decode tok/s |",
        "|---|---|---|---|---|",
    ]
    for name, row in (("teacher (fine-tuned)", teacher), ("student", student)):
        lines.append(
            f"| {name} | {row['params']:,} | {served(row, 'served_mb'):.3f} | "
            f"{served(row, 'served_perplexity'):.3f} | {served(row, 'served_tokens_per_s'):.0f} |"
        )
    ratios = (
        student["params"] / teacher["params"],
        served(student, "served_perplexity") / served(teacher, "served_perplexity"),
        served(student, "served_tokens_per_s") / served(teacher, "served_tokens_per_s"),
    )
    return lines + [
        "",
        f"Student / teacher: {ratios[0]:.2f}× the parameters, {ratios[1]:.3f}× the perplexity, {ratios[2]:.2f}× the "
        "decode speed.",
        "",
    ]


def _endpoint_section(url: str, model_name: str, prompt: str) -> list[str]:
    body = json.dumps({"model": model_name, "prompt": prompt, "max_tokens": 32, "temperature": 0}, ensure_ascii=False)
    chat_body = json.dumps(
        {"model": model_name, "messages": [{"role": "user", "content": prompt}], "max_tokens": 32, "temperature": 0},
        ensure_ascii=False,
    )
    return [
        "## Endpoint",
        "",
        f"Serving at `{url}/v1/completions` (OpenAI-compatible).",
        "",
        "```bash",
        f"curl {url}/v1/completions -H 'Content-Type: application/json' -d '{body}'",
        "```",
        "",
        "```python",
        "from openai import OpenAI",
        f'client = OpenAI(base_url="{url}/v1", api_key="unused")',
        f'print(client.completions.create(model="{model_name}", prompt="{prompt}", max_tokens=32, '
        f"temperature=0).choices[0].text)",
        f'chat = client.chat.completions.create(model="{model_name}", messages=[{{"role": "user", "content": '
        f'"{prompt}"}}], max_tokens=32, temperature=0)',
        "print(chat.choices[0].message.content)",
        "```",
        "",
        "Chat (`/v1/chat/completions`, through the model's chat template):",
        "",
        "```bash",
        f"curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{chat_body}'",
        "```",
        "",
    ]


def write_report(output: Path, state: dict, samples: dict[str, dict[str, str]], endpoint: dict | None) -> Path:
    """<output>/report/report.md and its PNGs, and report.html (the runs page, self-contained: opens from disk).
    `state` is the pipeline state (stage times, resources, results)."""
    report = output / "report"
    report.mkdir(parents=True, exist_ok=True)
    lines = [
        "# minigpt_ray pipeline report",
        "",
        "## Stages",
        "",
        "| stage | seconds | resources | result |",
        "|---|---|---|---|",
    ]
    for name, info in state["stages"].items():
        lines.append(f"| {name} | {info['seconds']:.0f} | {info['resources']} | {info['result']} |")
    lines += ["", "## Results", ""]
    for stage, title in (
        ("pretrain", "Pretraining"),
        ("finetune", "Fine-tuning"),
        ("sft", "Supervised fine-tuning on chat data"),
    ):
        metrics_file = output / stage / "metrics.json"
        if metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
            plot_losses(metrics, f"{title}: {metrics['model']}", report / f"loss_{stage}.png")
            lines += _training_section(title, metrics, f"loss_{stage}.png")
    pareto_file = output / "sweep" / "pareto.json"
    if pareto_file.is_file():
        staged = report / ".pareto.png.tmp"
        shutil.copyfile(output / "sweep" / "pareto.png", staged)
        staged.replace(report / "pareto.png")
        pareto = json.loads(pareto_file.read_text(encoding="utf-8"))
        lines += _sweep_section(pareto) + _student_section(pareto)
    if samples:
        lines += [
            "## Samples (seeded top-k 40, temperature 0.8; chat replies greedy)",
            "",
            "| model | prompt | completion |",
            "|---|---|---|",
        ]
        for model_label, by_prompt in samples.items():
            for prompt, text in by_prompt.items():
                cell = text.replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {model_label} | {prompt} | {cell} |")
        lines.append("")
    if endpoint:
        lines += _endpoint_section(endpoint["url"], endpoint["model_name"], endpoint["prompt"])
    path = report / "report.md"
    atomic_write_text(path, "\n".join(lines))
    atomic_write_text(report / "report.html", runs_page(runs_data(output)))
    return path
