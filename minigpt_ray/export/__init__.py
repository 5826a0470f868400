"""Exports to formats other tools run (GGUF for llama.cpp / Ollama) and llama.cpp as their runtime. No Ray."""

from minigpt_ray.export.gguf import GGUF_FILE, export_gguf, write_gguf

__all__ = ["GGUF_FILE", "export_gguf", "write_gguf"]
