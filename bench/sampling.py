"""How the transformers engine draws a token: speed and how often rounding moves a draw.

On a CPU (and with a seed per row everywhere) the engine samples in a logits processor
(core.generation.SeededSampling) rather than through generate(do_sample=True). Side by side in
one run, for one decoding step of a 49,152-token vocabulary (the built-in model's), 16 rows (a
training step's batch) and 2 rows (the chat's pair):

- `multinomial`: softmax and torch.multinomial, as generate(do_sample=True) draws;
- `cumulative_sum_seeded`: the engine's processor before: one uniform number per row (a stream
  per row) found in the cumulative sum by binary search;
- `gumbel_max`: the engine's draw without seeds (one call to torch's random stream);
- `gumbel_max_seeded`: the engine's draw with a random stream per row (what training uses, so
  that a completion depends on its seed alone).

Then how often a draw moves to another token when the logits differ by rounding (another batch
shape, other padding: up to +-5e-5 here) for the same random numbers, over 4000 rows of flat
logits (a barely trained model's): the cumulative sum against the Gumbel-max trick.

    python bench/sampling.py [--out bench/results/sampling_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.generation import SeededSampling, sample_gumbel_max  # noqa: E402
from studio.machine import cpu_name  # noqa: E402

VOCAB = 49_152


def cumulative_sum_draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The earlier draw: the first token whose cumulative probability passes u."""
    cdf = probs.cumsum(-1)
    u = uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:]
    picked = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).float().argmax(-1)
    return torch.minimum(picked, last)


def per_step_ms(draw, repeats: int) -> float:
    draw()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        draw()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


class CumulativeSumSampling(SeededSampling):
    """The engine's processor before the Gumbel-max draw: one uniform number per row, from a
    stream per row when seeded (drawn for the whole answer at once, as it was)."""

    def __init__(self, *args, max_new_tokens: int = 256, **kwargs):
        super().__init__(*args, **kwargs)
        self.uniforms = (torch.stack([torch.rand(max_new_tokens, dtype=torch.float64,
                                                 generator=torch.Generator().manual_seed(s))
                                      for s in self.seeds]) if self.seeds else None)
        self.position = 0

    def __call__(self, input_ids, scores):
        scores = scores.float() / self.temperature
        if self.uniforms is not None:
            uniforms = self.uniforms[:, self.position % self.uniforms.shape[1]]
            self.position += 1
        else:
            uniforms = torch.rand(scores.shape[0])
        choice = cumulative_sum_draw(torch.softmax(scores, dim=-1), uniforms)
        return torch.full_like(scores, float("-inf")).scatter_(-1, choice[:, None], 0.0)


def speeds(rows: int, repeats: int, temperature: float = 0.9) -> dict:
    """Each processor whole: temperature, the draw, and the one-choice scores for generate()."""
    torch.manual_seed(0)
    scores = torch.randn(rows, VOCAB) * 3
    ids = torch.zeros(rows, 1, dtype=torch.long)
    seeds = list(range(rows))
    return {
        "multinomial": per_step_ms(
            lambda: torch.multinomial(torch.softmax(scores / temperature, -1), 1), repeats),
        "cumulative_sum_seeded": per_step_ms(
            lambda p=CumulativeSumSampling(temperature, 1.0, 0, seeds): p(ids, scores), repeats),
        "gumbel_max": per_step_ms(
            lambda p=SeededSampling(temperature, 1.0, 0): p(ids, scores), repeats),
        "gumbel_max_seeded": per_step_ms(
            lambda p=SeededSampling(temperature, 1.0, 0, seeds): p(ids, scores), repeats),
    }


def rounding_moves(rows: int = 4000) -> dict:
    torch.manual_seed(0)
    out = {}
    for spread in (1e-5, 1e-4):
        scores = torch.randn(rows, VOCAB) * 1.3
        nudged = scores + (torch.rand_like(scores) - 0.5) * spread
        uniforms = torch.rand(scores.shape)
        u = uniforms[:, 0].double()
        moved_cdf = (cumulative_sum_draw(torch.softmax(scores, -1), u)
                     != cumulative_sum_draw(torch.softmax(nudged, -1), u)).sum().item()
        moved_gumbel = (sample_gumbel_max(scores, uniforms.clone())
                        != sample_gumbel_max(nudged, uniforms.clone())).sum().item()
        out[f"+-{spread / 2:g}"] = {"rows": rows, "cumulative_sum_moved": moved_cdf,
                                    "gumbel_max_moved": moved_gumbel}
        del scores, nudged, uniforms
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sampling_cpu.json"))
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    result = {"machine": {"cpu": cpu_name(), "platform": platform.platform(),
                          "torch": torch.__version__},
              "vocab": VOCAB, "unit": "ms per decoding step (median)", "speed": {}}
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        result["speed"][f"{n}_threads"] = {f"{rows}_rows": speeds(rows, args.repeats)
                                          for rows in (16, 2)}
    torch.set_num_threads(threads)
    result["rounding_moves_a_draw"] = rounding_moves()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
