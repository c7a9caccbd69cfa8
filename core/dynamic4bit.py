"""Dynamic 4-bit (`model.precision: dynamic4bit`): most linear layers in NF4, the few that lose
the most in 4-bit kept unquantized, up to a memory budget.

What a layer loses is measured on the model itself, not taken from a list: a handful of
calibration texts go through the model in 16-bit, and each linear layer's output on its own
inputs is compared with what its NF4 round trip (bitsandbytes' own quantizer, as loading uses)
gives: the relative error ||X Wᵀ - X Q(W)ᵀ|| / ||X Wᵀ||. Inputs with outlier channels make some
layers lose far more than others (on the built-in model, 0.03 to 0.17; the weights alone differ
only from 0.092 to 0.102). The layers with the largest error stay unquantized until
`model.dynamic_keep_share` of the linear layers' parameters is spent. The measurement runs once
per model (about 20 s on 2 CPU cores for the built-in model) and is kept in the cache folder.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# Short chat-like texts in a few styles; enough tokens to show each layer's input outliers.
CALIBRATION = [
    ("What is 3 + 4?", "3 + 4 = 7."),
    ("What is 12 times 7?", "12 times 7 is 84."),
    ("Name a colour.", "Blue is a colour."),
    ("Write a haiku about the sea.", "Waves fold into foam,\nsalt wind writes on the wet sand,\n"
                                     "the tide takes it back."),
    ("Explain in one sentence why the sky is blue.",
     "Air scatters blue light from the sun more than red light, so the sky looks blue."),
    ("Was ist die Hauptstadt von Frankreich?", "Die Hauptstadt von Frankreich ist Paris."),
    ("def add(a, b):", "    return a + b"),
    ("If a train travels 60 km in 45 minutes, what is its speed in km/h?",
     "<think>45 minutes is 0.75 hours; 60 / 0.75 = 80.</think> 80 km/h"),
]
VERSION = 1  # of the measurement; a change measures again


def _cache_file(path: str) -> Path:
    from .models import cache_dir

    config = Path(path) / "config.json"
    stamp = f"{Path(path).resolve()}:{config.stat().st_mtime_ns}" if config.exists() else path
    key = hashlib.sha1(f"v{VERSION}:{stamp}".encode()).hexdigest()[:16]
    return cache_dir() / "dynamic4bit" / f"{key}.json"


def layer_errors(path: str) -> list[dict]:
    """[{"name", "error", "params"}] for every linear layer bitsandbytes would quantize (all but
    the output head), largest error first. Cached per model."""
    return _measured(path)["layers"]


def _measured(path: str) -> dict:
    cached = _cache_file(path)
    try:
        found = json.loads(cached.read_text())
        if isinstance(found.get("layers"), list) and isinstance(found.get("head"), str):
            return found
    except (OSError, ValueError, AttributeError):
        pass
    head, layers = _measure(path)
    found = {"model": str(path), "head": head, "layers": layers}
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(found, indent=0))
    tmp.replace(cached)
    return found


def _measure(path: str) -> tuple[str, list[dict]]:
    import bitsandbytes.functional as bnbf
    import torch
    from transformers import AutoModelForCausalLM

    from .models import load_tokenizer

    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    head = model.get_output_embeddings()
    inputs: dict[str, list] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            hooks.append(module.register_forward_hook(
                lambda mod, args, out, name=name: inputs.setdefault(name, []).append(
                    args[0].detach().reshape(-1, args[0].shape[-1]))))
    try:
        with torch.no_grad():
            for question, answer in CALIBRATION:
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": question}], add_generation_prompt=True,
                    tokenize=False) + answer
                model(**tokenizer(text, return_tensors="pt", add_special_tokens=False))
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(model.named_modules())
    layers = []
    with torch.no_grad():
        for name, chunks in inputs.items():
            weight = modules[name].weight.data
            codes, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4",
                                              compress_statistics=True)
            x = torch.cat(chunks).float()
            exact = x @ weight.float().T
            rounded = x @ bnbf.dequantize_4bit(codes, state).float().T
            error = ((rounded - exact).norm() / exact.norm().clamp_min(1e-12)).item()
            layers.append({"name": name, "error": round(error, 6), "params": weight.numel()})
    layers.sort(key=lambda layer: -layer["error"])
    return next(n for n, m in model.named_modules() if m is head), layers


def unquantized_modules(path: str, share: float) -> list[str]:
    """What bitsandbytes should leave as it is: the output head (as it does by default) and
    the layers that lose most (`kept_layers`)."""
    return [_measured(path)["head"]] + kept_layers(path, share)


def kept_layers(path: str, share: float) -> list[str]:
    """The layers to keep unquantized: largest error first, while their parameters stay within
    `share` of all the quantizable layers' parameters."""
    layers = layer_errors(path)
    budget = share * sum(layer["params"] for layer in layers)
    kept, spent = [], 0
    for layer in layers:
        if spent + layer["params"] <= budget:
            kept.append(layer["name"])
            spent += layer["params"]
    return kept
