"""Settings of the export job (`minigpt export`): a model directory to a format other tools run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from minigpt_ray.config.base import require
from minigpt_ray.config.serve import check_model_dir

GGUF_QUANTS = ("auto", "f32", "f16", "q8_0", "q4_0", "q4_1")


@dataclass
class ExportJobConfig:
    """Settings of one export: which model, to which format and type, where."""

    model: str = "runs/sweep/winner"
    """Model directory to export: a fine-tuned model/, a sweep candidate (winner/, any format) or an HF Llama
    directory with its tokenizer."""
    output: str = "runs/export"
    """Output directory: model.gguf, the tokenizer files and export.json (written atomically)."""
    format: str = "gguf"
    """Export format: gguf (llama.cpp, Ollama, LM Studio)."""
    quant: str = "auto"
    """GGUF tensor type: f32, f16, q8_0, q4_0, q4_1, or auto (q4_1 for an int4 candidate: its codes map bit for bit;
    q8_0 otherwise). With 4-bit types the tied embedding / output layer is written as q8_0."""

    def validate(self) -> ExportJobConfig:
        require(self.format == "gguf", "format", "must be gguf", self.format)
        require(self.quant in GGUF_QUANTS, "quant", f"must be one of {', '.join(GGUF_QUANTS)}", self.quant)
        require(bool(self.output.strip()), "output", "must be a directory path", self.output)
        check_model_dir(self.model)
        out, src = Path(self.output).resolve(), Path(self.model).resolve()
        require(out != src and src not in out.parents, "output", "must not be the model directory or inside it",
                self.output)  # fmt: skip
        require(not out.is_file(), "output", "is a file, not a directory", self.output)
        return self
