"""4-bit, dynamic 4-bit and 16-bit side by side on the built-in model, in one run.

For each precision the base model is loaded by the real loader (`core.models.load_model`, no
adapter) and measured on the same texts:
- weight memory: the bytes of every parameter and buffer, plus bitsandbytes' quantization
  state (block scales) of the 4-bit layers;
- closeness to the full model: the 32-bit model answers 24 prompts (greedy, up to 48 tokens;
  none of them is among the calibration texts dynamic 4-bit measures its layers on); each
  precision then scores those answers: mean log-likelihood per token, and how often its most
  likely next token is the 32-bit model's;
- reference answers: mean log-likelihood per token of the right answer to 40 sums of the
  built-in arithmetic set ("7"), after the chat-formatted question.

    python bench/dynamic4bit.py [--threads 2]

Result: bench/results/dynamic4bit_cpu.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.learning_study import machine  # noqa: E402

PROMPTS = [
    "What is 17 + 25?", "What is 9 times 8?", "Subtract 45 from 100.", "Is 91 a prime number?",
    "Name three fruits.", "What colour is grass?", "Write one sentence about autumn.",
    "Translate 'good morning' into French.", "What is the capital of Italy?",
    "Give me a synonym for 'happy'.", "Explain what a verb is.", "Why do we sleep?",
    "Write a short poem about rain.", "How many legs does a spider have?",
    "What does a thermometer measure?", "Describe a cat in one sentence.",
    "What is 3 squared?", "If I have 5 apples and eat 2, how many are left?",
    "Wie viele Tage hat eine Woche?", "Quelle est la couleur du ciel ?",
    "def square(x):", "List two planets.", "What is the opposite of 'cold'?",
    "Tell me a fun fact about the ocean.",
]
SETTINGS = [("32bit", None), ("16bit", None), ("4bit", None), ("dynamic4bit", 0.1),
            ("dynamic4bit", 0.2)]


def weight_bytes(model) -> int:
    total = sum(t.numel() * t.element_size() for t in model.parameters())
    total += sum(t.numel() * t.element_size() for t in model.buffers())
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        while state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            total += state.code.numel() * state.code.element_size()
            state = getattr(state, "state2", None)
    return total


def chat_ids(tokenizer, question: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                        add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def score(model, pairs: list[tuple[list[int], list[int]]], reference_top=None) -> dict:
    """Mean log-likelihood per answer token and, with `reference_top`, the share of positions
    whose most likely token is the reference model's."""
    logps, agree, tops = [], [], []
    with torch.no_grad():
        for i, (prompt, answer) in enumerate(pairs):
            ids = torch.tensor([prompt + answer])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
            logp = logits.log_softmax(-1)
            logps.append(logp.gather(1, torch.tensor(answer)[:, None]).squeeze(1))
            top = logits.argmax(-1)
            tops.append(top)
            if reference_top is not None:
                agree.append((top == reference_top[i]).float())
    out = {"loglik_per_token": round(torch.cat(logps).mean().item(), 4)}
    if reference_top is not None:
        out["top1_agreement"] = round(torch.cat(agree).mean().item(), 4)
    return out, tops


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from core.config import ModelConfig
    from core.data import arithmetic_dataset
    from core.dynamic4bit import kept_layers, layer_errors
    from core.models import load_model, resolve_source

    started = time.time()
    path = resolve_source("default")
    t0 = time.time()
    errors = layer_errors(path)
    measure_s = round(time.time() - t0, 1)
    rows, reference, reference_top = [], None, None
    for precision, share in SETTINGS:
        cfg = ModelConfig(source="default", precision=precision,
                          dynamic_keep_share=share if share is not None else 0.1)
        t0 = time.time()
        loaded = load_model(cfg, lora=False, fast_cpu_generation=False)
        load_s = time.time() - t0
        model, tokenizer = loaded.model.eval(), loaded.tokenizer
        if reference is None:  # the 32-bit model's own greedy answers
            stops = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
            reference = []
            with torch.no_grad():
                for q in PROMPTS:
                    prompt = chat_ids(tokenizer, q)
                    out = model.generate(torch.tensor([prompt]), max_new_tokens=48,
                                         do_sample=False, eos_token_id=stops,
                                         pad_token_id=tokenizer.pad_token_id)
                    reference.append((prompt, out[0, len(prompt):].tolist()))
            sums = arithmetic_dataset(n=40, seed=7, max_operand=50)
            arithmetic = [(chat_ids(tokenizer, r["question"]),
                           tokenizer(str(r["answer"]), add_special_tokens=False)["input_ids"])
                          for r in sums]
        close, tops = score(model, reference, reference_top)
        if reference_top is None:
            reference_top = tops
            close.pop("top1_agreement", None)
        sums_score, _ = score(model, arithmetic)
        row = {"precision": precision, "keep_share": share,
               "kept_layers": len(kept_layers(path, share)) if share is not None else None,
               "weight_mb": round(weight_bytes(model) / 2**20, 1),
               "load_s": round(load_s, 1),
               "vs_32bit_answers": close, "arithmetic_answers": sums_score}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del loaded, model
    base = next(r for r in rows if r["precision"] == "4bit")
    for r in rows:
        r["weight_vs_4bit"] = round(r["weight_mb"] / base["weight_mb"], 3)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "threads": args.threads,
              "model": "SmolLM2-135M-Instruct (built-in)", "layer_measure_s": measure_s,
              "layer_error_range": [errors[-1]["error"], errors[0]["error"]],
              "worst_layers": errors[:5], "rows": rows, "wall_s": round(time.time() - started)}
    out = ROOT / "bench" / "results" / "dynamic4bit_cpu.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
