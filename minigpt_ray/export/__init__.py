"""Exports to formats other tools run: GGUF for llama.cpp / Ollama. Plain Python, no Ray."""

from minigpt_ray.export.gguf import GGUF_FILE, export_gguf

__all__ = ["GGUF_FILE", "export_gguf"]
