"""What /health tells about the served model beyond liveness: its format, bytes and how many replicas serve it
(the playground's model panel shows these)."""

from __future__ import annotations

import json
import time
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def gguf_format(path: Path) -> str:
    """ "GGUF Q4_1" etc.: the file type llama.cpp reports for the file (general.file_type)."""
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("general.file_type")
    if field is None:
        return "GGUF"
    kind = gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name
    return f"GGUF {kind.removeprefix('MOSTLY_')}"


def _torch_format(directory: Path) -> str:
    """The sweep's format name (dense, int8-weight, 2:4 sparse ...) when the directory is a sweep candidate, else
    the dtype config.json declares."""
    for name, key in (("manifest.json", "format"), ("config.json", "torch_dtype"), ("config.json", "dtype")):
        try:
            value = json.loads((directory / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError):
            continue
        if value:
            return f"safetensors {value}"
    return "safetensors"


def model_facts(model_dir: str, runtime: str, gguf_path: Path | None = None) -> dict:
    """{"format": ..., "model_bytes": ...} of what the replica loaded: the GGUF file for llama.cpp, else the weight
    files of the directory (an adapter directory: the adapter's own files)."""
    if runtime == "llama.cpp" and gguf_path is not None:
        return {"format": gguf_format(gguf_path), "model_bytes": gguf_path.stat().st_size}
    directory = Path(model_dir)
    weights = [p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    return {"format": _torch_format(directory), "model_bytes": sum(p.stat().st_size for p in weights)}


class ReplicaCount:
    """Running replicas of this replica's deployment, from Serve's status (asked at most every `ttl_s` seconds:
    /health may be polled often)."""

    def __init__(self, ttl_s: float = 2.0):
        self.ttl_s, self.value, self.at = ttl_s, None, -1e9

    def get(self) -> int | None:
        if time.monotonic() - self.at < self.ttl_s:
            return self.value
        from ray import serve

        try:
            ctx = serve.get_replica_context()
            app = serve.status().applications[ctx.app_name]
            self.value = app.deployments[ctx.deployment].replica_states.get("RUNNING", 0)
        except Exception:  # noqa: BLE001 - health must answer even when the controller is busy or restarting
            self.value = None
        self.at = time.monotonic()
        return self.value
