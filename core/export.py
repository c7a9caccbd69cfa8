"""Take a run home: the LoRA adapter as it is (peft), the base with the adapter merged in
(16-bit safetensors for transformers), or one GGUF file for llama.cpp, Ollama and LM Studio.

`python -m core export RUN_DIR --format adapter|merged|gguf [--quant f16|q8_0|q4_k_m]`.
The GGUF is made the way llama.cpp makes its own: the merged model (in float32, so that nothing
is rounded twice) goes through llama.cpp's `convert_hf_to_gguf.py` to f16, then through
llama.cpp's quantizer (`llama_model_quantize`, from the llama-cpp-python build of the same
llama.cpp) to the chosen type; a `Modelfile` for Ollama with the chat template, the system prompt
and the stop tokens goes beside it. `scripts/setup_export.sh` installs both halves of llama.cpp
(see `converter()`); every artifact carries the run's model card.

Progress and failures are codes with English words here (`STEPS`, `MESSAGES`); the studio shows
each code in the page's language (studio/locales, export.step.<code>, export.fail.<code>).
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from .config import RunConfig

FORMATS = ("adapter", "merged", "gguf")
QUANTS = ("q4_k_m", "q8_0", "f16")  # smallest first
LLAMA_CPP_VERSION = "0.3.36"  # llama-cpp-python; the converter comes from the same release
CONVERTER_DIR = "aha-llama.cpp"  # under the environment's share/ (scripts/setup_export.sh)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md", "reward.svg",
                 "aha_config.yaml")
EXPORT_DIR = "export"
CARD_FILES = ("README.md", "reward.svg", "aha_config.yaml")  # a model card and what it links

STEPS = {
    "loading": "Loading the base model",
    "merging": "Merging the adapter into the base model",
    "saving": "Saving the merged model",
    "converting": "Converting to GGUF with llama.cpp",
    "quantizing": "Quantizing to {quant} with llama.cpp",
    "checking": "Asking the GGUF file a question in llama.cpp",
}

MESSAGES = {
    "no_converter": ("GGUF export needs llama.cpp's converter and quantizer; install them with: "
                     "bash scripts/setup_export.sh"),
    "converter_failed": "llama.cpp's converter could not convert this model: {reason}",
    "quantize_failed": "llama.cpp's quantizer failed (exit status {status}) for {quant}",
    "check_failed": ("llama.cpp could not answer with the GGUF file it made (exit status {status}); "
                     "nothing was kept"),
    "bad_format": "Unknown export format '{value}'; choose one of: adapter, merged, gguf.",
    "bad_quant": "Unknown GGUF type '{value}'; choose one of: q4_k_m, q8_0, f16.",
    "no_space": "Not enough free disk space for this export: about {need} needed, {free} free.",
    "out_taken": ("The folder '{folder}' already holds other files; choose a new folder for the "
                  "export (only an earlier export is replaced)."),
    "timed_out": "llama.cpp took longer than {minutes} minutes and was stopped.",
}


class ExportError(RuntimeError):
    """An export that cannot be done; `code` and `values` let the studio say it in its
    language."""

    def __init__(self, code: str, **values):
        super().__init__(MESSAGES[code].format(**values))
        self.code, self.values = code, values


Progress = Callable[..., None]


def _quiet(code: str, **values) -> None:
    pass


def converter() -> Path | None:
    """llama.cpp's `convert_hf_to_gguf.py`: in the llama.cpp checkout named by AHA_LLAMA_CPP,
    else the copy scripts/setup_export.sh unpacked into this environment. None when it is not
    there, or when llama.cpp's quantizer (llama-cpp-python) is not installed."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return None
    place = Path(os.environ.get("AHA_LLAMA_CPP") or Path(sys.prefix) / "share" / CONVERTER_DIR)
    script = place / "convert_hf_to_gguf.py"
    return script if script.is_file() else None


def default_out(run_dir: Path, fmt: str, quant: str = "q4_k_m", label: str = "final") -> Path:
    """Where an export goes unless told: RUN_DIR/export/<run>[-step-N]-<format> (a folder)."""
    stem = run_dir.name + ("" if label == "final" else f"-{label}")
    kind = {"adapter": "adapter", "merged": "merged-16bit", "gguf": f"gguf-{quant}"}[fmt]
    return run_dir / EXPORT_DIR / f"{stem}-{kind}"


def export_run(run_dir: str | Path, fmt: str, *, quant: str = "q4_k_m",
               checkpoint: str | None = None, out: str | Path | None = None,
               progress: Progress = _quiet, check: bool = True, threads: int | None = None) -> dict:
    """Export one of a run's adapters (the final one, else the newest checkpoint, or the one
    named). Returns {"format", "folder", "files": [paths], "checkpoint"} and, for a GGUF checked
    in llama.cpp, "check": {"question", "answer"}."""
    from .evaluate import find_adapter
    from .modelcard import collapse_note

    if fmt not in FORMATS:
        raise ExportError("bad_format", value=fmt)
    if fmt == "gguf" and quant not in QUANTS:
        raise ExportError("bad_quant", value=quant)
    if fmt == "gguf" and converter() is None:
        raise ExportError("no_converter")
    run_dir = Path(run_dir)
    cfg = RunConfig.load(run_dir / "config.yaml")
    adapter, label = find_adapter(run_dir, checkpoint)
    folder = Path(out) if out else default_out(run_dir, fmt, quant, label)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir())
                                                    and not (folder / "export.json").exists())):
        raise ExportError("out_taken", folder=folder.name)  # only an earlier export is replaced
    if threads:
        import torch
        torch.set_num_threads(threads)
    # built beside its place and renamed once complete and checked: a failed export leaves
    # nothing half-written, and an earlier one in its place stays until then
    folder.parent.mkdir(parents=True, exist_ok=True)
    _check_space(cfg, fmt, folder.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        card = {"note": collapse_note(run_dir) if label == "final" else "",
                "checkpoint": label}
        if fmt == "adapter":
            files = _adapter(adapter, run_dir, cfg, work, card)
        elif fmt == "merged":
            files = _merged(adapter, run_dir, cfg, work, progress, card)
        else:
            files = _gguf(adapter, run_dir, cfg, work, folder.name, quant, progress, threads,
                          card)
        result = {"format": fmt, "folder": str(folder), "checkpoint": label,
                  "files": [str(folder / f.name) for f in files]}
        if fmt == "gguf":
            result["quant"] = quant
            if check:
                progress("checking")
                result["check"] = check_gguf(files[0], cfg, threads)
        (work / "export.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _check_space(cfg: RunConfig, fmt: str, where: Path) -> None:
    """Refuse before starting when the disk cannot hold the export's files and the float32 copy
    a GGUF is made from (judged from the base model's files where they are on this machine)."""
    from .models import resolve_source

    if fmt == "adapter":
        return
    try:
        folder = Path(resolve_source(cfg.model.source))
        weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    except Exception:  # a Hub id not downloaded yet: nothing to judge by
        return
    need = int(weights * (3.5 if fmt == "gguf" else 1.2))
    free = shutil.disk_usage(where).free
    if need > free:
        raise ExportError("no_space", need=_gb(need), free=_gb(free))


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB"


def copy_adapter(adapter: Path, out: Path) -> list[Path]:
    """The adapter's own files (weights, config, model card), without a checkpoint's optimizer
    and RNG state. Needs no torch (the studio calls it in its own process)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (adapter / name).exists():
            shutil.copy2(adapter / name, out / name)
    return [out / n for n in ADAPTER_FILES if (out / n).exists()]


def _adapter(adapter: Path, run_dir: Path, cfg: RunConfig, work: Path, card: dict) -> list[Path]:
    from .modelcard import write_model_card

    copy_adapter(adapter, work)
    write_model_card(work, run_dir, cfg, **card)  # fresh: with any evaluation since training
    return [work / n for n in ADAPTER_FILES if (work / n).exists()]


def merge_adapter(adapter: Path, cfg: RunConfig, out: Path, dtype: str,
                  progress: Progress = _quiet) -> None:
    """The base model with the adapter merged in, saved to `out` with its tokenizer (carrying the
    run's chat template) and a generation config that stops at every end-of-turn token. The
    merge is done in float32 and only the result is cast to `dtype`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .models import load_tokenizer, resolve_source, stop_token_ids

    progress("loading")
    path = resolve_source(cfg.model.source)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    progress("merging")
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    progress("saving")
    tokenizer = load_tokenizer(path, cfg.model.chat_template)
    tokenizer.padding_side = "right"  # the usual default for whoever loads it next
    stops = stop_token_ids(tokenizer, merged)
    merged.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.to(getattr(torch, dtype)).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _merged(adapter: Path, run_dir: Path, cfg: RunConfig, work: Path,
            progress: Progress, card: dict) -> list[Path]:
    from .modelcard import write_model_card

    merge_adapter(adapter, cfg, work, "bfloat16", progress)
    write_model_card(work, run_dir, cfg, kind="merged", **card)
    return sorted(work.iterdir())


def _gguf(adapter: Path, run_dir: Path, cfg: RunConfig, work: Path, stem: str, quant: str,
          progress: Progress, threads: int | None, card: dict) -> list[Path]:
    from .modelcard import write_model_card

    with tempfile.TemporaryDirectory(prefix=".merged-", dir=work.parent) as tmp:
        merge_adapter(adapter, cfg, Path(tmp), "float32", progress)
        progress("converting")
        f16 = work / f"{stem}-f16.gguf"
        convert_to_gguf(Path(tmp), f16, cfg.name or run_dir.name)
    target = work / f"{stem}.gguf"
    if quant == "f16":
        f16.rename(target)
    else:
        progress("quantizing", quant=quant)
        quantize_gguf(f16, target, quant, threads)
        f16.unlink()
    modelfile = work / "Modelfile"
    modelfile.write_text(ollama_modelfile(target.name, cfg), encoding="utf-8")
    write_model_card(work, run_dir, cfg, kind="gguf", file=target.name, **card)
    return [target, modelfile] + [work / n for n in CARD_FILES]


def no_paths(text: str) -> str:
    """A message without this machine's paths in it (the page shows it), at most 300 characters."""
    return re.sub(r"(/[^\s/:'\"]+)+/?", "…", str(text))[:300]


def convert_to_gguf(model_dir: Path, out_file: Path, name: str) -> None:
    """llama.cpp's own converter, in a child process (it reads the safetensors and tokenizer of
    `model_dir` and writes one f16 GGUF with the chat template and special tokens)."""
    from .runs import child_env

    script = converter()
    if script is None:
        raise ExportError("no_converter")
    proc = _child([sys.executable, str(script), str(model_dir), "--outtype", "f16",
                   "--outfile", str(out_file), "--model-name", name],
                  child_env(HF_HUB_OFFLINE="1"), 3600)
    if proc.returncode != 0 or not out_file.exists():
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise ExportError("converter_failed", reason=no_paths(lines[-1] if lines else "no output"))


def quantize_gguf(src: Path, dst: Path, quant: str, threads: int | None = None) -> None:
    """llama.cpp's quantizer (`llama_model_quantize`) from f16 to `quant`, in a child process
    (a crash inside llama.cpp becomes one line, not the caller's end). Tensors whose rows a
    k-quant cannot split (not a multiple of 256) get llama.cpp's own fallback type."""
    proc = _llama_cpp_child("quantize", str(src), str(dst), quant, str(threads or 0))
    if proc.returncode != 0 or not dst.exists():
        raise ExportError("quantize_failed", status=proc.returncode, quant=quant)


def _quantize_here(src: str, dst: str, quant: str, threads: int) -> int:
    import llama_cpp

    ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
             "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]
    _silence_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or max(1, len(os.sched_getaffinity(0)))
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))


def _llama_cpp_child(*args: str, timeout: int = 3600) -> subprocess.CompletedProcess:
    from .runs import child_env

    return _child([sys.executable, "-m", "core.export", *args], child_env(), timeout)


def _child(cmd: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    """A child that is stopped, with a one-line error, when it runs past `timeout` seconds."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ExportError("timed_out", minutes=timeout // 60) from None


_LOG_CALLBACK = None


def _silence_llama_cpp() -> None:
    """llama.cpp writes every tensor it touches to stderr; keep its errors only."""
    global _LOG_CALLBACK
    import llama_cpp

    if _LOG_CALLBACK is None:
        @llama_cpp.llama_log_callback
        def callback(level, text, user_data):
            if level == 4:  # GGML_LOG_LEVEL_ERROR
                sys.stderr.write(text.decode("utf-8", "replace"))
        _LOG_CALLBACK = callback
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def load_gguf(path: str | Path, threads: int | None = None, n_ctx: int = 1024):
    """A GGUF file in llama.cpp (llama-cpp-python), quietly."""
    from llama_cpp import Llama

    _silence_llama_cpp()
    return Llama(model_path=str(path), n_ctx=n_ctx, verbose=False, seed=0,
                 n_threads=threads or max(1, len(os.sched_getaffinity(0))))


def gguf_greedy(llm, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """llama.cpp's greedy continuation of token ids (top-k 1), up to an end-of-generation
    token."""
    import llama_cpp

    out = []
    for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                              repeat_penalty=1.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(out) >= max_tokens:
            break
        out.append(token)
    return out


def check_gguf(path: Path, cfg: RunConfig, threads: int | None = None) -> dict:
    """Load the file in llama.cpp (in a child process), format a question with the chat template
    stored inside it, and answer it greedily: proof that the file works where it is going."""
    question = "What is 12 + 30?"
    messages = ([{"role": "system", "content": cfg.data.system_prompt}]
                if cfg.data.system_prompt else []) + [{"role": "user", "content": question}]
    proc = _llama_cpp_child("chat", str(path), json.dumps(messages), str(threads or 0),
                            timeout=600)
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])["answer"]
    except (IndexError, ValueError, KeyError):
        raise ExportError("check_failed", status=proc.returncode) from None
    return {"question": question, "answer": answer.strip()}


def _chat_here(path: str, messages: list[dict], threads: int) -> str:
    llm = load_gguf(path, threads or None)
    reply = llm.create_chat_completion(messages=messages, max_tokens=48, temperature=0.0,
                                       top_k=1, seed=0)
    return reply["choices"][0]["message"]["content"] or ""


# Ollama's own template language (Go templates), for the chat formats our presets use; a model
# whose template is none of these gets no TEMPLATE line, and Ollama reads the one stored in the
# GGUF file.
OLLAMA_TEMPLATES = {
    "chatml": ('{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
               '{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}'
               '<|im_start|>assistant\n{{ .Response }}<|im_end|>\n'),
    "llama3": ('{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}'
               '<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n'
               '{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>'
               '\n\n{{ .Response }}<|eot_id|>'),
    "gemma": ('<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}'
              '<end_of_turn>\n<start_of_turn>model\n{{ .Response }}<end_of_turn>\n'),
    "phi3": ('{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}{{ if .Prompt }}'
             '<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>\n{{ .Response }}<|end|>\n'),
}


def chat_family(template: str) -> str | None:
    """Which of OLLAMA_TEMPLATES a Jinja chat template writes, by its markers."""
    markers = {"chatml": "<|im_start|>", "llama3": "<|start_header_id|>",
               "gemma": "<start_of_turn>", "phi3": "<|assistant|>"}
    found = [name for name, mark in markers.items() if mark in (template or "")]
    return found[0] if len(found) == 1 else None


def ollama_modelfile(gguf_name: str, cfg: RunConfig) -> str:
    """An Ollama Modelfile for the GGUF beside it: `ollama create NAME -f Modelfile`."""
    from .models import END_OF_TURN_TOKENS, load_tokenizer, resolve_source

    tokenizer = load_tokenizer(resolve_source(cfg.model.source), cfg.model.chat_template)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    family = chat_family(template)
    vocab = tokenizer.get_vocab()
    stops = [tok for tok in END_OF_TURN_TOKENS if tok in vocab and tok in template]
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", cfg.name or "").strip("-.").lower() or "my-model"
    lines = [f"# Ollama: ollama create {name} -f Modelfile",
             f"FROM ./{gguf_name}"]
    if family:
        lines.append(f'TEMPLATE """{OLLAMA_TEMPLATES[family]}"""')
    else:
        lines.append("# the chat template is the one stored in the GGUF file")
    if cfg.data.system_prompt:
        lines.append(f'SYSTEM """{cfg.data.system_prompt.replace(chr(34) * 3, "")}"""')
    lines += [f'PARAMETER stop "{tok}"' for tok in stops]
    lines.append(f"PARAMETER temperature {cfg.grpo.temperature:g}")
    return "\n".join(lines) + "\n"


def probe_gguf(path: str | Path, prompts: list[list[int]], max_tokens: int, text: str = "",
               threads: int | None = None) -> dict:
    """What llama.cpp makes of a GGUF file, from a child process: its greedy continuation of
    each prompt (token ids), the chat template stored in it, and its token ids for `text`."""
    request = {"prompts": prompts, "max_tokens": max_tokens, "text": text}
    proc = _llama_cpp_child("probe", str(path), json.dumps(request), str(threads or 0),
                            timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp probe failed ({proc.returncode}): {proc.stderr[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _probe_here(path: str, request: dict, threads: int) -> dict:
    llm = load_gguf(path, threads or None)
    return {"completions": [gguf_greedy(llm, ids, request["max_tokens"])
                            for ids in request["prompts"]],
            "chat_template": llm.metadata.get("tokenizer.chat_template", ""),
            "tokens_of_text": llm.tokenize(request["text"].encode(), add_bos=False,
                                           special=True) if request["text"] else []}


def _child_main(argv: list[str]) -> int:
    """`python -m core.export quantize SRC DST QUANT THREADS`, `chat GGUF MESSAGES THREADS` or
    `probe GGUF REQUEST THREADS`: llama.cpp's halves of an export and its checks, each in a
    process without torch."""
    if argv[0] == "quantize":
        return _quantize_here(argv[1], argv[2], argv[3], int(argv[4]))
    if argv[0] == "chat":
        print(json.dumps({"answer": _chat_here(argv[1], json.loads(argv[2]), int(argv[3]))}))
        return 0
    if argv[0] == "probe":
        print(json.dumps(_probe_here(argv[1], json.loads(argv[2]), int(argv[3]))))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
