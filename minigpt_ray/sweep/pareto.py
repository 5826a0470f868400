"""Pareto front, winner choice and the sweep's report files. Pure Python + matplotlib; no Ray.

A row is one candidate: {"trial", "label", "status", "perplexity", "size_mb", "decode_tokens_per_s", ...}.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from minigpt_ray.config.sweep import OBJECTIVE_MODES
from minigpt_ray.outputs import atomic_write_text

CSV_FIELDS = [
    "trial",
    "label",
    "status",
    "on_front",
    "perplexity",
    "ppl_ratio",
    "size_mb",
    "bytes_ratio",
    "linear_bytes_ratio",
    "decode_tokens_per_s",
    "decode_ratio",
    "batched_tokens_per_s",
    "served_runtime",
    "served_mb",
    "served_bytes_ratio",
    "served_tokens_per_s",
    "served_decode_ratio",
    "served_batched_tokens_per_s",
    "served_batched_ratio",
    "served_perplexity",
    "served_ppl_ratio",
    "gguf_type",
    "gguf_mb",
    "gguf_perplexity",
    "gguf_ppl_ratio",
    "gguf_decode_tokens_per_s",
    "gguf_batched_tokens_per_s",
    "params",
    "sparsity",
    "format",
    "method",
    "sparsity_setting",
    "pattern",
    "quant",
    "group_size",
    "recovery_steps",
    "student_layers",
    "student_hidden_size",
    "distill_steps",
    "error",
]


class NoWinnerError(ValueError):
    """No candidate meets the winner constraint; the message lists the closest ones."""


def _better_or_equal(a: dict, b: dict, objectives: list[str]) -> bool:
    return all((a[o] <= b[o]) if OBJECTIVE_MODES[o] == "min" else (a[o] >= b[o]) for o in objectives)


def dominates(a: dict, b: dict, objectives: list[str]) -> bool:
    """a is at least as good on every objective and strictly better on one."""
    return _better_or_equal(a, b, objectives) and any(a[o] != b[o] for o in objectives)


def pareto_front(rows: list[dict], objectives: list[str]) -> list[dict]:
    """Successful rows no other successful row dominates, sorted by the first objective."""
    ok = [r for r in rows if r.get("status") == "ok"]
    front = [r for r in ok if not any(dominates(o, r, objectives) for o in ok if o is not r)]
    unique, seen = [], set()
    for r in front:  # equal points (e.g. an uncompressed trial and the baseline): keep the first
        key = tuple(r[o] for o in objectives)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return sorted(unique, key=lambda r: [r[o] for o in objectives])


SERVED_SOURCES = {
    "served_perplexity": ("gguf_perplexity", "perplexity"),
    "served_mb": ("gguf_mb", "size_mb"),
    "served_tokens_per_s": ("gguf_decode_tokens_per_s", "decode_tokens_per_s"),
    "served_batched_tokens_per_s": ("gguf_batched_tokens_per_s", "batched_tokens_per_s"),
}
"""Each served metric: (its value from the GGUF in llama.cpp, its value from the PyTorch form)."""


def served(row: dict, key: str) -> float:
    """A candidate's metric as it will be served (its GGUF in llama.cpp when it has one, else its PyTorch form)."""
    return row.get(key, row[SERVED_SOURCES[key][1]])


def best_student(rows: list[dict]) -> dict | None:
    """The distilled student with the lowest served perplexity, or None when the sweep trained none."""
    students = [r for r in rows if r.get("status") == "ok" and r.get("student_layers")]
    return min(students, key=lambda r: served(r, "served_perplexity"), default=None)


def constraint_text(
    baseline_ppl: float, max_ppl_ratio: float, max_ppl: float, max_size_mb: float, prefer: str | None = None
) -> str:
    """The winner's limits, and with `prefer` which of the candidates within them wins."""
    parts = [f"served perplexity <= {max_ppl_ratio:g} x uncompressed ({baseline_ppl * max_ppl_ratio:.3f})"]
    if max_ppl:
        parts.append(f"served perplexity <= {max_ppl:g}")
    if max_size_mb:
        parts.append(f"served size <= {max_size_mb:g} MB")
    choice = {None: "", "size": ", the smallest", "speed": ", the fastest"}[prefer]
    return " and ".join(parts) + choice


def choose_winner(
    rows: list[dict],
    baseline_ppl: float,
    max_ppl_ratio: float = 1.05,
    max_ppl: float = 0.0,
    max_size_mb: float = 0.0,
    prefer: str = "size",
) -> dict:
    """Among candidates meeting every constraint (as served), the smallest (prefer size; ties: lower perplexity) or
    the fastest at batch-1 decode (prefer speed; ties: smaller)."""
    limit = baseline_ppl * max_ppl_ratio
    if max_ppl:
        limit = min(limit, max_ppl)
    ok = [r for r in rows if r.get("status") == "ok"]
    meets = [
        r
        for r in ok
        if served(r, "served_perplexity") <= limit and (not max_size_mb or served(r, "served_mb") <= max_size_mb)
    ]
    if meets and prefer == "speed":
        return min(meets, key=lambda r: (-served(r, "served_tokens_per_s"), served(r, "served_mb")))
    if meets:
        return min(meets, key=lambda r: (served(r, "served_mb"), served(r, "served_perplexity")))

    def shortfall(r: dict) -> float:
        return max(served(r, "served_perplexity") / limit, served(r, "served_mb") / max_size_mb if max_size_mb else 0)

    listed = "; ".join(
        f"{r['label']} (ppl {served(r, 'served_perplexity'):.3f}, {served(r, 'served_mb'):.3f} MB)"
        for r in sorted(ok, key=shortfall)[:3]
    )
    raise NoWinnerError(
        f"winner: no candidate meets {constraint_text(baseline_ppl, max_ppl_ratio, max_ppl, max_size_mb)}"
        f"; closest: {listed or 'none (every trial failed)'}"
    )


def add_ratios(rows: list[dict], baseline: dict) -> None:
    for r in rows:
        if r.get("status") == "ok":
            r["ppl_ratio"] = r["perplexity"] / baseline["perplexity"]
            r["bytes_ratio"] = r["weights_bytes"] / baseline["weights_bytes"]
            r["linear_bytes_ratio"] = r["linear_bytes"] / baseline["linear_bytes"]
            r["decode_ratio"] = r["decode_tokens_per_s"] / baseline["decode_tokens_per_s"]
            r["served_ppl_ratio"] = served(r, "served_perplexity") / baseline["perplexity"]
            r["served_bytes_ratio"] = served(r, "served_mb") / baseline["size_mb"]  # against the dense PyTorch model
            r["served_decode_ratio"] = served(r, "served_tokens_per_s") / baseline["decode_tokens_per_s"]
            if "batched_tokens_per_s" in baseline:
                dense = baseline["batched_tokens_per_s"]
                r["served_batched_ratio"] = served(r, "served_batched_tokens_per_s") / dense
            if "gguf_mb" in r:  # the GGUF's quality against the PyTorch candidate it was written from
                r["gguf_ppl_ratio"] = r["gguf_perplexity"] / r["perplexity"]


def rows_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buffer.getvalue()


def plot_front(rows: list[dict], front: list[dict], baseline: dict, winner: dict | None, path: Path) -> None:
    """Size vs perplexity: every trial, the front highlighted, the baseline and winner marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([r["size_mb"] for r in ok], [r["perplexity"] for r in ok], c="#9aa5b1", s=22, label="trials")
    ax.plot(
        [r["size_mb"] for r in front], [r["perplexity"] for r in front], "-o", c="#d9480f", ms=6, label="Pareto front"
    )
    ax.scatter([baseline["size_mb"]], [baseline["perplexity"]], marker="s", c="black", s=60, label="uncompressed")
    if winner is not None:
        ax.scatter(
            [winner["size_mb"]],
            [winner["perplexity"]],
            marker="*",
            c="#2b8a3e",
            s=260,
            zorder=5,
            label=f"winner: {winner['label']}",
        )
    ax.set_xlabel("weights on disk (MB)")
    ax.set_ylabel("validation perplexity")
    ax.set_title("Compression sweep: size vs perplexity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def summary_markdown(
    rows: list[dict], front: list[dict], baseline: dict, winner: dict | None, constraint: str, objectives: list[str]
) -> str:
    failed = [r for r in rows if r.get("status") != "ok"]
    lines = [
        "# Compression sweep",
        "",
        f"{len(rows) - 1} trials ({len(failed)} failed) and the uncompressed baseline; objectives: "
        f"{', '.join(objectives)}.",
        f"Uncompressed: perplexity {baseline['perplexity']:.3f}, {baseline['size_mb']:.3f} MB of weights, "
        f"{baseline['decode_tokens_per_s']:.0f} decode tokens/s.",
        "",
        "## Pareto front",
        "",
        "| candidate | perplexity (x base) | MB (x base) | decode tok/s (x base) | served by | served MB (x base) | "
        "served tok/s (x base) | sparsity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in front:
        lines.append(
            f"| {r['label']} | {r['perplexity']:.3f} ({r['ppl_ratio']:.3f}) | {r['size_mb']:.3f} "
            f"({r['bytes_ratio']:.3f}) | {r['decode_tokens_per_s']:.0f} ({r['decode_ratio']:.2f}) | "
            f"{r.get('served_runtime', 'torch')} | {served(r, 'served_mb'):.3f} ({r['served_bytes_ratio']:.3f}) | "
            f"{served(r, 'served_tokens_per_s'):.0f} ({r['served_decode_ratio']:.2f}) | {r['sparsity']:.2f} |"
        )
    lines += ["", "## Winner", "", f"Constraint: {constraint}.", ""]
    if winner is not None:
        lines.append(
            f"**{winner['label']}** (trial {winner['trial']}): perplexity {winner['perplexity']:.3f}, "
            f"{winner['size_mb']:.3f} MB — in `winner/`."
        )
        lines += served_lines(winner)
    else:
        lines.append("No candidate met the constraint.")
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- {r['trial']} {r['label']}: {r.get('error', '')}" for r in failed]
    return "\n".join(lines) + "\n"


def served_lines(winner: dict) -> list[str]:
    """How the winner runs as served (its GGUF in llama.cpp) against the dense PyTorch model."""
    if "gguf_mb" not in winner:
        return ["", "Served by PyTorch (no GGUF form: not a Llama-style model, or llama.cpp not installed)."]
    return [
        "",
        f"Served by llama.cpp as `winner/model.gguf` ({winner['gguf_type']}): {winner['gguf_mb']:.3f} MB "
        f"({winner['served_bytes_ratio']:.3f}× the dense model's weights), batch-1 decode "
        f"{winner['gguf_decode_tokens_per_s']:.0f} tokens/s ({winner['served_decode_ratio']:.2f}× dense PyTorch), "
        f"8 requests together {winner['gguf_batched_tokens_per_s']:.0f} tokens/s "
        f"({winner.get('served_batched_ratio', float('nan')):.2f}× dense PyTorch batched), "
        f"perplexity {winner['gguf_perplexity']:.3f} ({winner['gguf_ppl_ratio']:.4f}× its PyTorch form).",
    ]


def write_reports(
    output: Path,
    rows: list[dict],
    front: list[dict],
    baseline: dict,
    winner: dict | None,
    constraint: str,
    objectives: list[str],
) -> None:
    front_ids = {r["trial"] for r in front}
    for r in rows:
        r["on_front"] = r["trial"] in front_ids
    atomic_write_text(output / "trials.csv", rows_csv(rows))
    atomic_write_text(output / "pareto.csv", rows_csv(front))
    payload = {
        "objectives": objectives,
        "baseline": baseline,
        "front": front,
        "winner": winner,
        "constraint": constraint,
        "trials": rows,
    }
    atomic_write_text(output / "pareto.json", json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
    plot_front(rows, front, baseline, winner, output / "pareto.png")
    atomic_write_text(output / "summary.md", summary_markdown(rows, front, baseline, winner, constraint, objectives))
