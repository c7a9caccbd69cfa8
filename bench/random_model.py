"""A model folder with random weights, built from an architecture file, for benchmarks at sizes
whose weights cannot be downloaded (no network here, none on the GPU machine either).

    python bench/random_model.py bench/configs/qwen2.5-1.5b.json /tmp/qwen-1.5b-random
    python bench/random_model.py CONFIG OUT --tokenizer DIR --seed 0 --dtype bfloat16

The folder loads like any local model (config, safetensors weights, tokenizer with its chat
template). The tokenizer is the embedded model's unless --tokenizer names another folder; its
vocabulary may be smaller than the model's (ids past its end decode to nothing), which changes
nothing for memory or speed: those depend on the model's sizes. Random weights sample almost
uniformly, so completions run to the length limit: every step costs the most it can.
A folder built before from the same file, seed and dtype is reused.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAMP = "random_model.json"


def default_tokenizer_dir() -> Path:
    from core.models import embedded_model_dir

    return Path(embedded_model_dir())


def build(config_path: Path, out: Path, tokenizer_dir: Path | None = None, seed: int = 0,
          dtype: str = "bfloat16") -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = json.loads(Path(config_path).read_text())
    stamp = {"config_sha256": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
             "seed": seed, "dtype": dtype}
    out = Path(out)
    if (out / STAMP).exists() and json.loads((out / STAMP).read_text()) == stamp:
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or default_tokenizer_dir())
    fields = {k: v for k, v in spec.items() if not k.startswith("_")}
    model_type = fields.pop("model_type")
    fields.pop("torch_dtype", None)
    config = AutoConfig.for_model(model_type, **fields)
    # Special ids come from the tokenizer that travels with the weights.
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    del model
    tokenizer.save_pretrained(out)
    (out / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="architecture file (a config.json)")
    ap.add_argument("out", type=Path, help="folder to write")
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="folder holding the tokenizer files (default: the embedded model's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    a = ap.parse_args(argv)
    path = build(a.config, a.out, a.tokenizer, a.seed, a.dtype)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
