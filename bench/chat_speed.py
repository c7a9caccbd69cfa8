"""How fast the studio's chat answers, by path, in one run on the built-in model.

The chat ("Try and export") shows the trained adapter's answer beside the base model's. On a CPU
the studio's model process answers with transformers; a 4-bit model answers there from float32
copies of its dequantized weights when they fit (core.models.Float32GenerationWeights), except
on CPUs with AVX512-BF16, where bitsandbytes' packed bf16 layout answers (its output head from
a bf16 copy). vLLM answers instead on a GPU when it is installed (one process serving every
adapter). Measured here, each for the same question and forced
answer length (64 tokens from the adapter, then 64 from the base model, 3 questions, the first
left out as warm-up):

- transformers on the 4-bit layers, as trained (`generation.fast_cpu_4bit: false`);
- transformers on the float32 copies ("unpacked"), one answer after the other;
- the same with the adapter's and the base model's answer in one batch (peft's mixed adapters,
  with the LoRA layers computed by core.models.LeanLoraForGeneration: the chat now);
- the same batch with the LoRA layers through peft's own forward, as before;
- on CPUs with AVX512-BF16 (where the copies are the packed layout), the same batch with the
  output head in float32, as before its bf16 copy;
- vLLM in float32 and in bfloat16 (`generation`-style process, the adapter from its folder),
  when `.venv-vllm` exists;
- llama.cpp (core.gguf_chat, what the chat uses on a CPU where it is installed): the run's
  4-bit base as an f16 GGUF and the adapter converted by llama.cpp's converter, on all cores
  (the two answers on a thread each, as the chat writes them, and a token each in turn as it
  did before) and on one (what the chat takes on 2 cores while a run trains).

And what each costs before its first answer: loading (and making the copies), or starting vLLM.

    python bench/chat_speed.py [--out bench/results/chat_speed_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studio.machine import cpu_name  # noqa: E402

QUESTIONS = ["What is 3 + 4?", "What is 7 + 8?", "What is 2 + 9?"]
SYSTEM = "You are a careful math tutor. Answer with just the number."
TOKENS = 64


def _prompts(tokenizer):
    from studio.infer import _prompt_ids
    return [_prompt_ids(tokenizer, q, SYSTEM) for q in QUESTIONS]


def make_adapter(folder: Path) -> None:
    """An adapter on the built-in model with small random weights (what it answers does not
    matter here: every answer is forced to the same length)."""
    import torch

    from core.config import ModelConfig
    from core.models import load_model

    loaded = load_model(ModelConfig(source="default", precision="4bit"), seed=0)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.02)
    loaded.model.save_pretrained(folder)


def transformers_path(adapter: Path, unpack: bool, one_batch: bool = False,
                      float32_head: bool = False, peft_lora: bool = False) -> dict:
    import torch
    from peft import PeftModel

    from core.config import ModelConfig
    from core.generation import TransformersEngine
    from core.models import load_model

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    start = time.perf_counter()
    # unpack: the float32 copies of the 4-bit weights the studio samples from where they fit
    # (core.models.Float32GenerationWeights); else the 4-bit layers themselves
    loaded = load_model(ModelConfig(source="default", precision="4bit"), lora=False,
                        fast_cpu_generation=unpack)
    if float32_head:  # the packed layout's output head as it was: float32
        loaded.generation_weights._head = None
    model = PeftModel.from_pretrained(loaded.model, str(adapter), adapter_name="a").eval()
    ready = time.perf_counter() - start
    engine = TransformersEngine(model, loaded.tokenizer, loaded.device,
                                weights=loaded.generation_context)
    engine.lean_lora = not peft_lora  # peft's own LoRA forward, as before LeanLoraForGeneration
    times = []
    for prompt in _prompts(loaded.tokenizer):
        t = time.perf_counter()
        if one_batch:
            engine.generate([prompt, prompt], 1, TOKENS, 1.0, min_new_tokens=TOKENS,
                            adapter_names=["a", "__base__"])
        else:
            engine.generate([prompt], 1, TOKENS, 1.0, min_new_tokens=TOKENS)
            with model.disable_adapter():
                engine.generate([prompt], 1, TOKENS, 1.0, min_new_tokens=TOKENS)
        times.append(time.perf_counter() - t)
    return {"ready_s": round(ready, 1), "answer_pair_s": [round(x, 2) for x in times],
            "answer_pair_median_s": round(statistics.median(times[1:]), 2)}


def vllm_path(adapter: Path, dtype: str) -> dict:
    import torch

    from core.models import embedded_model_dir, load_tokenizer
    from core.vllm_engine import VLLMEngine

    start = time.perf_counter()
    tokenizer = load_tokenizer(str(embedded_model_dir()))
    engine = VLLMEngine(None, tokenizer, torch.device("cpu"), str(embedded_model_dir()),
                        lora_rank=16, dtype=dtype, max_loras=4, max_num_seqs=16,
                        max_model_len=1024)
    ready = time.perf_counter() - start
    times = []
    try:
        for prompt in _prompts(tokenizer):
            t = time.perf_counter()
            engine.answer([prompt, prompt], [str(adapter), None], TOKENS, 1.0,
                          min_new_tokens=TOKENS, seed=1)
            times.append(time.perf_counter() - t)
    finally:
        engine.close()
    return {"ready_s": round(ready, 1), "answer_pair_s": [round(x, 2) for x in times],
            "answer_pair_median_s": round(statistics.median(times[1:]), 2)}


def llama_cpp_path(adapter: Path, threads: int, apart: bool = True) -> dict:
    """The chat's llama.cpp engine (core.gguf_chat): the run's 4-bit base as an f16 GGUF (made
    once per model, timed apart) and the adapter converted by llama.cpp's converter. With
    `apart` (the chat) and 2+ threads the two answers are written on a thread each; without,
    a token each in turn on all the threads (as before)."""
    import torch

    from core.config import ModelConfig
    from core.gguf_chat import GgufChat, base_gguf, cache_folder

    cfg = ModelConfig(source="default", precision="4bit")
    start = time.perf_counter()
    made = not (cache_folder(cfg) / "base.gguf").exists()
    folder = base_gguf(cfg)
    once = time.perf_counter() - start
    torch.set_num_threads(threads)
    start = time.perf_counter()
    chat = GgufChat(folder, threads)
    chat.share_cpu = False  # exactly `threads`, whatever the load this benchmark itself left
    chat.apart = apart
    models = [chat.model(str(adapter)), chat.model(None)]
    ready = time.perf_counter() - start
    tokenizer = chat.tokenizer()
    times = []
    try:
        for prompt in _prompts(tokenizer):
            t = time.perf_counter()  # the two answers side by side, as the chat writes them
            rows = chat.answer(models, [prompt], 1, TOKENS, 1.0, seed=1,
                                  min_new_tokens=TOKENS)
            assert [len(r) for r in rows] == [TOKENS, TOKENS]
            times.append(time.perf_counter() - t)
    finally:
        chat.close()
    return {"threads": threads, "answers_on_a_thread_each": apart and threads > 1,
            "gguf_made_once_s": round(once, 1) if made else None,
            "ready_s": round(ready, 1), "answer_pair_s": [round(x, 2) for x in times],
            "answer_pair_median_s": round(statistics.median(times[1:]), 2)}


def packed_layout() -> bool:
    """Whether this CPU answers from bitsandbytes' packed bf16 layout (AVX512-BF16)."""
    from bitsandbytes.functional import has_avx512bf16
    return bool(has_avx512bf16())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "chat_speed_cpu.json"))
    args = p.parse_args()
    from core.engine_choice import llama_cpp_ready, vllm_python

    result = {"benchmark": "chat_speed", "date": time.strftime("%Y-%m-%d"),
              "machine": {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)),
                          "python": platform.python_version(),
                          "avx512_bf16": packed_layout()},
              "load_average_1min": {"before": round(os.getloadavg()[0], 2)},
              "what": f"one question: {TOKENS} tokens from the adapter, then {TOKENS} from the "
                      f"base model; median of questions 2 and 3", "paths": {}}
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "adapter"
        make_adapter(adapter)
        result["paths"]["transformers_4bit_layers"] = transformers_path(adapter, unpack=False)
        result["paths"]["transformers_unpacked_float32"] = transformers_path(adapter, unpack=True)
        result["paths"]["transformers_unpacked_one_batch"] = transformers_path(
            adapter, unpack=True, one_batch=True)
        # the chat's LoRA layers through peft's own forward (before LeanLoraForGeneration)
        result["paths"]["transformers_unpacked_one_batch_peft_lora"] = transformers_path(
            adapter, unpack=True, one_batch=True, peft_lora=True)
        if packed_layout():  # the output head in bf16 (the chat now) or float32 (before)
            result["paths"]["transformers_packed_one_batch_float32_head"] = transformers_path(
                adapter, unpack=True, one_batch=True, float32_head=True)
        if llama_cpp_ready():  # all cores (a thread per answer, and the answers in turn as
            # before), and the one the studio's chat takes on 2 cores while a run trains
            cores = len(os.sched_getaffinity(0))
            result["paths"][f"llama_cpp_{cores}_threads"] = llama_cpp_path(adapter, cores)
            if cores > 1:
                result["paths"][f"llama_cpp_{cores}_threads_in_turn"] = llama_cpp_path(
                    adapter, cores, apart=False)
                result["paths"]["llama_cpp_1_threads"] = llama_cpp_path(adapter, 1)
        if vllm_python() is not None:
            for dtype in ("float32", "bfloat16"):
                result["paths"][f"vllm_{dtype}"] = vllm_path(adapter, dtype)
    base = result["paths"]["transformers_4bit_layers"]["answer_pair_median_s"]
    result["speedup_over_4bit_layers"] = {
        k: round(base / v["answer_pair_median_s"], 2) for k, v in result["paths"].items()}
    result["load_average_1min"]["after"] = round(os.getloadavg()[0], 2)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
