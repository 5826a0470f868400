"""ONNX Runtime GenAI against llama.cpp and transformers on the same model, batch-1 greedy decode, one run.

ONNX Runtime GenAI is not a project dependency; install it apart, then point PYTHONPATH at it:

  .venv/bin/python -m pip install --target /tmp/ortlib --no-deps onnxruntime-genai==0.18.0 onnxruntime==1.31.0 \
      onnx onnx_ir onnxscript flatbuffers ml_dtypes protobuf
  PYTHONPATH=/tmp/ortlib .venv/bin/python -m onnxruntime_genai.models.builder -m MODEL_DIR -o OUT_INT4 -p int4 -e cpu
  PYTHONPATH=/tmp/ortlib .venv/bin/python bench/ort_decode.py --model MODEL_DIR --gguf-dir DIR OUT_INT4 [OUT_INT8 ...]

MODEL_DIR is an HF Llama directory (bench/decode.py --llama-97m writes one); --gguf-dir holds `<quant>/model.gguf`
exports of it (minigpt export). 64 greedy tokens after a 16-token prompt, prefill included, 2 threads, best of 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import llama_cpp_tps, transformers_tps  # noqa: E402

PROMPT = list(range(100, 116))


def genai_tps(model_dir: Path, tokens: int, threads: int) -> tuple[float, int]:
    """(tokens/s, bytes of the ONNX files) of onnxruntime-genai's own generator on a builder output directory."""
    import onnxruntime_genai as og

    config_file = model_dir / "genai_config.json"
    config = json.loads(config_file.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options.update(intra_op_num_threads=threads, inter_op_num_threads=1)
    config_file.write_text(json.dumps(config))
    model, best = og.Model(str(model_dir)), float("inf")
    for attempt in range(4):  # the first run warms up
        params = og.GeneratorParams(model)
        length = len(PROMPT) + tokens
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(PROMPT)
        while not generator.is_done():
            generator.generate_next_token()
        if attempt:
            best = min(best, time.perf_counter() - start)
    return tokens / best, sum(f.stat().st_size for f in model_dir.glob("*.onnx*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the HF directory the ONNX and GGUF files were made from")
    parser.add_argument("--gguf-dir", required=True, help="directory with <quant>/model.gguf exports")
    parser.add_argument("onnx", nargs="+", help="onnxruntime-genai builder output directories")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    base, fp32_bytes = transformers_tps(Path(args.model), PROMPT, args.tokens, torch.float32)
    rows = [("transformers fp32", fp32_bytes, base)]
    for directory in args.onnx:
        tps, size = genai_tps(Path(directory), args.tokens, 2)
        rows.append((f"ONNX Runtime GenAI {Path(directory).name}", size, tps))
    for gguf in sorted(Path(args.gguf_dir).glob("*/model.gguf")):
        rows.append((f"llama.cpp {gguf.parent.name}", gguf.stat().st_size, llama_cpp_tps(gguf, PROMPT, args.tokens, 2)))
    print("| runtime, format | weights MB | tokens/s | vs transformers fp32 |\n|---|---|---|---|")
    for label, size, tps in rows:
        print(f"| {label} | {size / 1e6:.1f} | {tps:.1f} | {tps / base:.2f} |")


if __name__ == "__main__":
    main()
