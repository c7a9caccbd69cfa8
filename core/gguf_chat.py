"""The chat's llama.cpp engine on a CPU: a run's model answered by llama.cpp, made by llama.cpp's
own converters.

- The base: the model the run trains on, as its training loads it (for a 4-bit run, the NF4
  numbers its quantized layers compute with, dequantized exactly), written once per model by
  `convert_hf_to_gguf.py` as an f16 GGUF into a cache folder (`base_gguf`; one process builds
  it, others wait for it).
- Each adapter: `convert_lora_to_gguf.py` on its checkpoint folder (float32, so nothing is
  rounded), once per folder and file time.
- `GgufChat` keeps two llama.cpp contexts on the one memory-mapped base file, one answering as
  the base model and one with the chosen adapter applied (up to `max_adapters` adapters loaded,
  switched without reloading anything), and samples with the trainer's rule: temperature only
  (no top-k, top-p or min-p, no repetition penalty), greedy at temperature 0, each answer from
  its own seed.

On this project's 2-core CPU an answer pair of 64 tokens each took 1.74 s against 3.66 s for
transformers on bitsandbytes' packed layout (bench/chat_speed.py), and the greedy answers of a
trained demo adapter on 30 held-out questions were the same as the evaluation's (transformers)
in 30 of 30; the base model's in 18 of 30, with the same 13 right (f16 weights and llama.cpp's
matmuls round differently from the bf16 compute of the transformers path).
Needs llama-cpp-python and llama.cpp's converters (scripts/setup_export.sh).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

from .export import no_paths

FORMAT = 2  # bump when what base_gguf writes changes: older cache folders are not reused
LORA_CONVERTER = "convert_lora_to_gguf.py"


class GgufChatError(RuntimeError):
    """llama.cpp could not answer: the caller answers with transformers instead, for this
    request only (`request_only`: this adapter or this question) or from now on."""

    def __init__(self, message: str, request_only: bool = False):
        super().__init__(no_paths(message))
        self.request_only = request_only


def ready() -> bool:
    """Whether llama.cpp and both of its converters are installed here."""
    import importlib.util

    from .export import converter
    script = converter()
    return importlib.util.find_spec("llama_cpp") is not None and script is not None and \
        (script.parent / LORA_CONVERTER).exists()


def _stamp(path: str) -> list:
    """What identifies a model folder's weights: its files' names, sizes and times."""
    folder = Path(path)
    if not folder.is_dir():
        return [path]
    return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                  for f in folder.iterdir() if f.suffix in (".safetensors", ".bin", ".json"))


MAX_PARAMETERS = 500_000_000  # larger models keep transformers (see too_large)


def too_large(model_cfg) -> bool:
    """Whether the model is past MAX_PARAMETERS, counted from its config without loading it.
    Its llama.cpp copy is f16 (so that the NF4 numbers survive): a token reads 4x the bytes of
    the 4-bit layers transformers answers from, which paid off for the built-in 135M model here
    (bench/chat_speed.py) but is not measured for larger ones; their copy would also take GBs."""
    from .models import resolve_source
    try:
        return _parameters(resolve_source(model_cfg.source)) > MAX_PARAMETERS
    except Exception:  # not countable (no such model, an unknown kind): transformers answers
        return True     # and says what is wrong, as before


@functools.lru_cache(maxsize=16)
def _parameters(path: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())


def cache_folder(model_cfg) -> Path:
    """The folder of a model's llama.cpp copy: keyed by where its weights are, their files, the
    precision and keep share it trains at, the llama.cpp release and this module's format."""
    from .export import LLAMA_CPP_VERSION
    from .models import cache_dir, resolve_source

    path = resolve_source(model_cfg.source)
    key = json.dumps([path, _stamp(path), model_cfg.precision,
                      float(model_cfg.dynamic_keep_share), LLAMA_CPP_VERSION, FORMAT])
    return cache_dir() / "gguf" / f"{_prefix(path, model_cfg.precision)}" \
        f"{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _prefix(path: str, precision: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).name or "model")[:40]
    return f"{name}-{precision}-"


def base_gguf(model_cfg, progress: Callable[[], None] = lambda: None) -> Path:
    """The cache folder holding `base.gguf` (the model as its training loads it) and the
    config.json and tokenizer files the adapter converter and the prompts need; made once.
    `progress` is called before the slow part (about half a minute for the built-in model)."""
    import fcntl

    target = cache_folder(model_cfg)
    if (target / "base.gguf").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        if _try_lock(lock):
            if (target / "base.gguf").exists():
                return target
        else:  # another process builds it: wait for theirs
            progress()
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (target / "base.gguf").exists():
                return target
        _sweep(target.parent)
        progress()
        _build(model_cfg, target)
        _retire(model_cfg, target)
    return target


def _try_lock(lock) -> bool:
    import fcntl
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _sweep(parent: Path, hours: float = 1.0) -> None:
    """Half-built copies left by a process that was killed while building (older than an hour;
    a build takes about half a minute for the built-in model)."""
    import time
    for old in parent.glob(".*-*"):
        try:
            if old.is_dir() and time.time() - old.stat().st_mtime > hours * 3600:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def _identity(model_cfg) -> str:
    """Which model a copy is of, apart from its weights' files and the llama.cpp release."""
    from .models import resolve_source
    return json.dumps([resolve_source(model_cfg.source), model_cfg.precision,
                       float(model_cfg.dynamic_keep_share)])


def _retire(model_cfg, target: Path) -> None:
    """Removes this model's older copies (same precision and keep share), made before its
    weights, the llama.cpp release or FORMAT changed: each is hundreds of MB, never read again.
    A copy names its model in model.json; one without it is from before that file and has the
    same folder name. A process still answering from an old copy keeps its open file."""
    from .models import resolve_source

    identity = _identity(model_cfg)
    for old in target.parent.glob(_prefix(resolve_source(model_cfg.source),
                                           model_cfg.precision) + "*"):
        if old == target or len(old.name) != len(target.name) or not (old / "base.gguf").exists():
            continue
        named = old / "model.json"
        try:
            if not named.exists() or named.read_text() == identity:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def _build(model_cfg, target: Path) -> None:
    import torch

    from .export import ExportError, convert_to_gguf
    from .models import load_model, load_tokenizer, resolve_source, stop_token_ids

    loaded = load_model(model_cfg, lora=False, fast_cpu_generation=False,
                        device=torch.device("cpu"))
    model = loaded.model
    if getattr(model, "hf_quantizer", None) is not None:
        model = model.dequantize()  # bitsandbytes' own dequantization: the numbers it trains on
    stops = stop_token_ids(loaded.tokenizer, model)
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.generation_config.pad_token_id = loaded.tokenizer.pad_token_id
    # built beside the target and renamed, so a crash never leaves half a copy behind
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        hf = tmp / "hf"
        model.save_pretrained(hf)
        # the model's own tokenizer: each run's chat template is applied when it asks
        load_tokenizer(resolve_source(model_cfg.source)).save_pretrained(hf)
        del model, loaded
        try:
            convert_to_gguf(hf, tmp / "base.gguf", target.name)
        except ExportError as exc:
            raise GgufChatError(str(exc)) from None
        for f in hf.iterdir():  # all but the weights: the LoRA converter reads the config
            if f.suffix != ".safetensors":
                f.rename(tmp / f.name)
        shutil.rmtree(hf)
        (tmp / "stops.json").write_text(json.dumps(stops))
        (tmp / "model.json").write_text(_identity(model_cfg))
        if target.exists():  # a copy without its file, from before: replaced
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert_adapter(adapter: str | Path, base: Path, out: Path) -> None:
    """llama.cpp's `convert_lora_to_gguf.py` on a peft adapter folder, run in this process: its
    imports (torch, the converter's model classes) then cost once, about 3.6 s, and each later
    adapter about 0.1 s, against 6.7 s for every one in a child process (measured here). Its
    output goes to stderr; stdout carries this process's answers."""
    import contextlib
    import runpy

    from .export import converter

    script = converter().parent / LORA_CONVERTER
    argv, path = sys.argv, list(sys.path)
    sys.path.insert(0, str(script.parent))  # its own modules, as when it runs as a script
    sys.argv = [str(script), "--base", str(base), "--outtype", "f32", "--outfile", str(out),
                str(adapter)]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            runpy.run_path(str(script), run_name="__main__")
        status = 0
    except SystemExit as exc:
        status = exc.code or 0
    except Exception as exc:  # the converter's own checks raise (an unsupported layer, ...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GgufChatError(f"the adapter could not be converted: {reason[:200]}",
                            request_only=True) from None
    finally:
        sys.argv, sys.path[:] = argv, path
    if status or not out.exists():
        raise GgufChatError(f"the adapter could not be converted (exit status {status})",
                            request_only=True)


def unsupported(adapter: str | Path) -> str | None:
    """Why llama.cpp would answer wrongly for this adapter, or None: its converter writes one
    alpha and llama.cpp scales by alpha / rank, so rsLoRA, per-layer ranks or alphas and DoRA
    would come out silently different."""
    try:
        config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return "the adapter's adapter_config.json cannot be read"
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        return "the adapter is not a LoRA adapter"
    for key, what in (("use_rslora", "rsLoRA"), ("use_dora", "DoRA"),
                      ("rank_pattern", "per-layer ranks"), ("alpha_pattern", "per-layer alphas")):
        if config.get(key):
            return f"llama.cpp does not apply {what} adapters"
    return None


def _cpu_reading() -> tuple[float, float, float]:
    """(now, CPU seconds the whole machine spent busy, this process's CPU seconds), from
    psutil's CPU times (every platform). Work at lowered priority ("nice", such as a background
    build) does not count: it gives way."""
    import time

    import psutil
    t = psutil.cpu_times()
    busy = t.user + t.system + sum(getattr(t, f, 0.0) for f in
                                   ("irq", "softirq", "steal", "interrupt", "dpc"))
    return time.monotonic(), busy, time.process_time()


class CpuShare:
    """The threads an answer takes: the request's (fewer while a run trains beside it), and no
    more than the cores other work leaves idle now. llama.cpp's threads wait for each other by
    spinning, so on a busy CPU more threads are slower: with both cores of this 2-core machine
    busy with training, 48 tokens took 1.0-1.2 s on one thread, 2.6-4.1 s on two.

    "Now" is the last few seconds, watched by a thread that reads the CPU times four times a
    second (other processes' CPU time, this one's own taken out). The 1-minute load average,
    used before the first reading, still counts a run stopped a minute ago: asked right after a
    stop, an answer pair then took 4.3 s on one thread where two write it in 2.2 s."""

    def __init__(self, period: float = 0.25, span: float = 2.0):
        import time
        self._mark = (time.monotonic(), time.process_time())
        self.period, self.span = period, span
        self.busy: float | None = None  # cores other processes kept busy lately
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="cpu-share").start()

    def _watch(self) -> None:
        last = _cpu_reading()
        weight = min(1.0, self.period / self.span)
        while not self._stop.wait(self.period):
            now = _cpu_reading()
            if now[0] <= last[0]:
                continue
            others = max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0])
            self.busy = others if self.busy is None else self.busy + weight * (others - self.busy)
            last = now

    def close(self) -> None:
        self._stop.set()

    def threads(self, wanted: int, spinning: bool = True) -> int:
        """Threads for `wanted`: fewer by the cores others keep busy, counted to the nearest
        whole core for threads that spin while they wait for each other, only whole busy cores
        for threads that wait for nothing (the two answers of a pair, a thread each: with half a
        core taken by the page showing them they still wrote a pair in about half the time of
        one thread)."""
        import time
        try:
            cores = len(os.sched_getaffinity(0))
        except (OSError, AttributeError):
            return max(1, wanted)
        busy = self.busy
        if busy is not None:  # the machine's busy cores, in the share of them this process has
            busy *= cores / (os.cpu_count() or cores)
        else:
            now, cpu = time.monotonic(), time.process_time()
            then, cpu_then = self._mark
            self._mark = (now, cpu)
            # this process's share of the load: its CPU seconds per second since the last answer
            own = (cpu - cpu_then) / (now - then) if 0 < now - then < 60 else 0.0
            try:
                busy = max(0.0, os.getloadavg()[0] - own)
            except OSError:
                return max(1, wanted)
        return max(1, min(wanted, cores - int(round(busy) if spinning else busy)))


def _side_by_side(step: Callable, live: dict) -> None:
    """Each answer of `live` (row -> (model, token generator)) written on a thread of its own
    until `step(row, model, tokens)` says it has ended. The first failure is raised once all
    have stopped."""
    failed: list[BaseException] = []

    def write(row: int, model, tokens) -> None:
        try:
            while not failed and step(row, model, tokens):
                pass
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(exc)

    workers = [threading.Thread(target=write, args=(row, *pair), daemon=True)
               for row, pair in live.items()]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failed:
        raise failed[0]


class GgufChat:
    """A model kept loaded in llama.cpp for the chat: two contexts on its one memory-mapped file
    (llama-cpp-python reads the whole file into memory for a context made with an adapter, so
    the adapters are applied to a plain context instead), the base model's and one that answers
    with the chosen adapter; adapters by folder and file time (a checkpoint written again is
    converted again), at most `max_adapters` loaded."""

    def __init__(self, folder: Path, threads: int, max_adapters: int = 4, n_ctx: int = 2048):
        from .export import _silence_llama_cpp
        from .models import cache_dir
        from .runs import pid_alive

        _silence_llama_cpp()
        self.folder, self.threads, self.max_adapters = folder, threads, max_adapters
        self.stops = set(json.loads((folder / "stops.json").read_text()))
        try:
            limit = json.loads((folder / "config.json").read_text()).get("max_position_embeddings")
        except (OSError, ValueError):
            limit = None
        self.n_ctx = min(n_ctx, int(limit)) if limit else n_ctx
        work = cache_dir() / "gguf" / "adapters"
        work.mkdir(parents=True, exist_ok=True)
        for old in work.glob("*-*"):  # left by a model process that was killed
            pid = old.name.split("-")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=work))
        self.share_cpu = True  # fewer threads when the CPU is busy (CpuShare)
        self.apart = True      # two models' answers on two threads when there are cores for both
        self._cpu = CpuShare()
        self._base = self._load()
        self._tuned = None        # the context answering with an adapter, made when first asked
        self._adapters: dict = {}  # adapter key -> llama.cpp adapter, least recently used first
        self._applied = None      # the key of the adapter the tuned context answers with
        self._tokenizers: dict = {}  # chat template -> tokenizer

    def _load(self):
        from llama_cpp import Llama
        try:
            return Llama(model_path=str(self.folder / "base.gguf"), n_ctx=self.n_ctx,
                         n_threads=self.threads, n_threads_batch=self.threads, verbose=False,
                         seed=0)
        except (ValueError, RuntimeError) as exc:  # llama.cpp refused the file
            raise GgufChatError(str(exc)) from None

    def tokenizer(self, chat_template: str | None = None):
        """The model's tokenizer (with the run's chat template), loaded once."""
        from .models import load_tokenizer

        found = self._tokenizers.get(chat_template)
        if found is None:
            found = self._tokenizers[chat_template] = load_tokenizer(str(self.folder),
                                                                     chat_template)
        return found

    @staticmethod
    def adapter_key(adapter: str) -> tuple:
        folder = Path(adapter)
        stamps = [(f.name, f.stat().st_mtime_ns) for f in sorted(folder.glob("adapter_model.*"))]
        return (str(folder.resolve()), tuple(stamps))

    def model(self, adapter: str | None, progress: Callable[[], None] = lambda: None):
        """What answers for `adapter` (None: the base model), converted and loaded when missing;
        pass it to answer()."""
        import llama_cpp

        if not adapter:
            return (self._base, None)
        key = self.adapter_key(adapter)
        found = self._adapters.pop(key, None)
        if found is None:
            refused = unsupported(adapter)
            if refused:
                raise GgufChatError(refused, request_only=True)
            progress()
            if self._tuned is None:
                self._tuned = self._load()
            lora = self._tmp / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:16]}.gguf"
            try:
                convert_adapter(adapter, self.folder, lora)
                found = llama_cpp.llama_adapter_lora_init(self._tuned.model,
                                                          str(lora).encode("utf-8"))
            finally:
                lora.unlink(missing_ok=True)  # read into memory by now
            if not found:
                raise GgufChatError("llama.cpp could not load the converted adapter",
                                    request_only=True)
            while len(self._adapters) >= self.max_adapters:  # least recently used first
                old_key, old = next(iter(self._adapters.items()))
                del self._adapters[old_key]
                if self._applied == old_key:
                    self._apply(None)
                llama_cpp.llama_adapter_lora_free(old)
        self._adapters[key] = found
        return (self._tuned, key)

    def _apply(self, key) -> None:
        """The tuned context answers with adapter `key` (None: with none); what it had computed
        for another adapter is dropped."""
        import ctypes

        import llama_cpp

        if key == self._applied:
            return
        ctx = self._tuned.ctx
        if key is None:
            status = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[key])
            status = llama_cpp.llama_set_adapters_lora(ctx, adapters, 1,
                                                       (ctypes.c_float * 1)(1.0))
        if status:
            raise GgufChatError(f"llama.cpp could not apply the adapter (status {status})")
        self._tuned.reset()             # no cached prompt computed with the other adapter
        self._tuned._ctx.kv_cache_clear()
        self._applied = key

    def answer(self, models: list, prompts: list[list[int]], n: int, max_new_tokens: int,
               temperature: float, seed: int = 0,
               on_tokens: Callable[[int, list[int]], None] | None = None,
               min_new_tokens: int = 0) -> list[list[int]]:
        """n answers per prompt from each model (model major, then prompt, n each): token ids
        without the stop token, at most max_new_tokens each. The models write the
        same answer slot together, so that side-by-side answers grow together: each on a thread
        of its own when there are cores for both (1.28x as fast for a pair of 64 + 64 tokens on
        2 idle cores here, bench/chat_speed.py), else a token each in turn on one thread; answer
        j of prompt i draws from the same seed in every model (only the model differs).
        `on_tokens(row, tokens so far)` is called as they come; `min_new_tokens` keeps the stop
        tokens out until that many are written (benchmarks)."""
        import llama_cpp

        models = [self._ready(m) for m in models]
        per_model = len(prompts) * n
        rows: list[list[int]] = [[] for _ in range(len(models) * per_model)]
        greedy = temperature <= 0
        # two models' answers can be written a thread each: threads that wait for nothing
        could_apart = self.apart and len(models) > 1
        threads = self._cpu.threads(self.threads, spinning=not could_apart) \
            if self.share_cpu else self.threads
        for prompt in prompts:
            if len(prompt) + max_new_tokens > self.n_ctx:
                raise GgufChatError(f"the question and answer would not fit into {self.n_ctx} "
                                    f"tokens", request_only=True)

        def processors(row: int):
            if min_new_tokens <= 0:
                return None
            import numpy as np
            from llama_cpp import LogitsProcessorList

            stops = sorted(self.stops | {models[0].token_eos()})

            def no_stop_yet(_ids, scores):
                if len(rows[row]) < min_new_tokens:
                    scores = scores.copy()
                    scores[stops] = -np.inf
                return scores
            return LogitsProcessorList([no_stop_yet])

        # two models on two or more free cores: each writes its answer on its own thread (llama.cpp
        # lets go of Python while it computes), side by side; else one thread, a token each in turn
        apart = could_apart and threads >= len(models)
        per_thread = max(1, threads // len(models)) if apart else threads
        for model in models:
            llama_cpp.llama_set_n_threads(model.ctx, per_thread, per_thread)
        lock = threading.Lock()

        def step(row: int, model, tokens) -> bool:
            """The next token of one answer; False once it has ended."""
            token = next(tokens, None)
            if token is None or token in self.stops or \
                    llama_cpp.llama_vocab_is_eog(model._model.vocab, token):
                return False
            with lock:
                rows[row].append(token)
                if on_tokens is not None:
                    on_tokens(row, rows[row])
            return len(rows[row]) < max_new_tokens

        for i, prompt in enumerate(prompts):
            for j in range(n):
                live = {}
                for k, model in enumerate(models):
                    row = k * per_model + i * n + j
                    # the prompt computed afresh each time: llama-cpp-python would reuse what it
                    # computed for the last answer and compute only the prompt's last token,
                    # whose numbers differ a little from the whole prompt's (so the same seed
                    # could give another answer); a prompt costs a few milliseconds
                    model.reset()
                    model._ctx.kv_cache_clear()
                    model.set_seed((int(seed) * 1_000_003 + i * n + j) % 2**31)
                    live[row] = (model, model.generate(
                        prompt, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
                        temp=0.0 if greedy else temperature, repeat_penalty=1.0, reset=True,
                        logits_processor=processors(row)))
                if apart:
                    _side_by_side(step, live)
                    continue
                while live:
                    for row, (model, tokens) in list(live.items()):
                        if not step(row, model, tokens):
                            del live[row]
        return rows

    def _ready(self, model: tuple):
        """The llama.cpp model of a model() handle, its adapter applied."""
        llm, key = model
        if key is not None:
            if key not in self._adapters:
                raise GgufChatError("the adapter was unloaded meanwhile", request_only=True)
            self._apply(key)
        return llm

    def close(self) -> None:
        """Frees both contexts and the model (llama.cpp frees the adapters with it)."""
        self._cpu.close()
        for llm in (self._tuned, self._base):
            if llm is not None:
                llm.close()
        self._tuned = None
        self._adapters.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)

