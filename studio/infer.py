"""Model work the studio hands to a child process: sample completions, merge an adapter.

Run as `python -m studio.infer` with one JSON request on stdin. Progress lines and the result are
JSON objects on stdout, one per line: {"progress": "..."}, then {"result": ...} or {"error":
"one line", "traceback": "..."}. The UI process never imports torch; a crash here costs a message.
Progress lines are in the language the request names ("lang": "de"; English without one).
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from studio.i18n import DEFAULT, pick, speaking, t


def _threads(req: dict) -> int:
    """A model job's threads: the request's, or half the cores (a run may be training beside)."""
    return int(req.get("threads") or max(1, (os.cpu_count() or 2) // 2))


def _cores(req: dict) -> int:
    """The cores a model job may take when its threads do not wait on each other: the
    request's "cores" (all of the server's when no run trains), else its threads."""
    return int(req.get("cores") or _threads(req))


def _say(**fields) -> None:
    print(json.dumps(fields, ensure_ascii=False), flush=True)


def _model_config(req: dict):
    from core.config import ModelConfig
    return ModelConfig(source=req.get("source") or "default",
                       precision=req.get("precision") or "4bit",
                       dynamic_keep_share=float(req.get("dynamic_keep_share", 0.1)),
                       chat_template=req.get("chat_template") or None)


def _prompt_ids(tokenizer, question: str, system: str) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else [])
    messages.append({"role": "user", "content": question})
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    return ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids


class WarmModels:
    """Models kept loaded between requests of one serving process: the base models by
    (source, precision, chat template), up to `keep`, and on each its adapters by folder and
    file time (a checkpoint written again is loaded again)."""

    def __init__(self, keep: int = 1, adapters: int = 4):
        self.keep, self.max_adapters = keep, adapters
        self.vllm_failed = False  # vLLM failed once in this process: transformers answers
        self.gguf_failed = False  # the same for llama.cpp
        self.bases: dict = {}      # key -> {"loaded", "adapters": {adapter key: name}}
        self._vllm, self._vllm_key = None, None  # the vLLM process and the model it serves
        self._gguf, self._gguf_key = None, None  # the llama.cpp models and the model they are

    def gguf(self, req: dict):
        """The llama.cpp chat (core.gguf_chat) for the request's model: its llama.cpp copy made
        once per model (kept in the cache folder), then loaded once per serving process."""
        from core.gguf_chat import GgufChat, base_gguf
        from studio.jobs import model_key

        key = model_key(req)
        if self._gguf is None or self._gguf_key != key:
            if self._gguf is not None:
                self._gguf.close()
                self._gguf = None
            _say(progress=t("chat.progress.finding"))
            folder = base_gguf(_model_config(req),
                               lambda: _say(progress=t("chat.progress.making_gguf")))
            _say(progress=t("chat.progress.loading_model"))
            self._gguf, self._gguf_key = GgufChat(folder, _cores(req), self.max_adapters), key
        # each answer takes its request's cores: llama.cpp writes the two answers of a pair on
        # one thread each, which wait for nothing, so a streamed answer needs no core left over
        self._gguf.threads = _cores(req)
        return self._gguf

    def vllm(self, req: dict, rank: int):
        """The vLLM process answering for this base model (started, or started again with room
        for a larger adapter rank), kept between requests like the models above."""
        from core.engine_choice import vllm_python
        from core.generation import vllm_dtype, vllm_lora_rank
        from core.models import load_tokenizer, resolve_source
        from core.vllm_engine import VLLMEngine
        from studio.jobs import model_key

        key = model_key(req)
        engine = self._vllm
        if engine is not None and (self._vllm_key != key or engine.lora_rank < rank
                                   or not engine.alive):
            engine.close()
            engine = None
        if engine is None:
            import torch

            _say(progress=t("chat.progress.starting_vllm"))
            path = resolve_source(req.get("source") or "default")
            gpu = torch.cuda.is_available()
            device = torch.device("cuda" if gpu else "cpu")
            engine = VLLMEngine(None, load_tokenizer(path, req.get("chat_template") or None),
                                device, path, lora_rank=vllm_lora_rank(max(rank, 16)),
                                dtype=vllm_dtype(req.get("precision") or "4bit", device),
                                max_model_len=_context(path), max_num_seqs=16,
                                max_loras=self.max_adapters,
                                gpu_memory_utilization=0.3 if gpu else 0.0,
                                python=vllm_python())
            self._vllm, self._vllm_key = engine, key
        return engine

    def close(self) -> None:
        if self._vllm is not None:
            self._vllm.close()
            self._vllm = None
        if self._gguf is not None:
            self._gguf.close()
            self._gguf = None

    def get(self, req: dict):
        """(loaded model, adapter name or None) for a request; loads what is missing."""
        from pathlib import Path

        from core.models import load_model
        from studio.jobs import model_key

        key = model_key(req)
        entry = self.bases.pop(key, None)
        if entry is None:
            while len(self.bases) >= self.keep:  # least recently used goes first
                self.bases.pop(next(iter(self.bases)))
            _say(progress=t("chat.progress.loading_model"))
            # on a CPU, a 4-bit model answers from float32 copies of its weights where they fit
            # (core.models.Float32GenerationWeights): the same numbers, about twice as fast
            entry = {"loaded": load_model(_model_config(req), lora=False), "adapters": {}}
        self.bases[key] = entry
        adapter = req.get("adapter")
        if not adapter:
            return entry["loaded"], None
        weights = Path(adapter) / "adapter_model.safetensors"
        akey = (str(Path(adapter).resolve()), weights.stat().st_mtime_ns if weights.exists() else 0)
        loaded = entry["loaded"]
        name = entry["adapters"].get(akey)
        if name is None:
            from peft import PeftModel

            _say(progress=t("chat.progress.loading_adapter"))
            name = f"a{abs(hash(akey)) % 10**8}"
            if not hasattr(loaded.model, "peft_config"):
                loaded.model = PeftModel.from_pretrained(loaded.model, adapter, adapter_name=name)
            else:
                loaded.model.load_adapter(adapter, adapter_name=name)
            entry["adapters"][akey] = name
            while len(entry["adapters"]) > self.max_adapters:
                old_key = next(iter(entry["adapters"]))
                loaded.model.delete_adapter(entry["adapters"].pop(old_key))
        loaded.model.set_adapter(name)
        return loaded, name


def _adapter_rank(folder: str) -> int:
    """The largest LoRA rank in a saved adapter (its r, or a larger one in rank_pattern)."""
    try:
        config = json.loads((Path(folder) / "adapter_config.json").read_text())
        return max([int(config["r"])] + [int(r) for r in
                                         (config.get("rank_pattern") or {}).values()])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 16


def _context(path: str) -> int:
    """vLLM's context for the chat: 4,096 tokens, or the model's own limit when smaller."""
    try:
        from transformers import AutoConfig
        limit = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
    except (OSError, ValueError):
        limit = None
    return min(4096, int(limit)) if limit else 4096


def generate_vllm(req: dict, warm: WarmModels) -> dict:
    """generate() answered by a vLLM process: the adapter's answers and the base model's in
    one batch (each prompt names its adapter; multi-LoRA)."""
    adapter = req.get("adapter") or None
    engine = warm.vllm(req, _adapter_rank(adapter) if adapter else 0)
    prompts = [_prompt_ids(engine.tokenizer, q, req.get("system") or "")
               for q in req["questions"]]
    n = int(req.get("num") or 1)
    sides = (["adapter", "base"] if req.get("compare_base") else ["adapter"]) if adapter \
        else ["base"]
    rows = [(side, i) for side in sides for i in range(len(prompts))]
    _say(progress=t("chat.progress.generating"))
    # n answers per row from one request: vLLM draws each of them from its own stream
    gen = engine.answer([prompts[i] for _, i in rows],
                        [adapter if side == "adapter" else None for side, _ in rows],
                        int(req.get("max_new_tokens") or 64),
                        _temperature(req), seed=int(req.get("seed") or 0), n=n)
    out = {side: [[] for _ in prompts] for side in sides}
    for k, (side, i) in enumerate(rows):
        out[side][i] = gen.texts[k * n:(k + 1) * n]
    out["engine"] = "vllm"
    return out


def generate_gguf(req: dict, warm: WarmModels) -> dict:
    """generate() answered by llama.cpp (core.gguf_chat): the adapter's and the base model's
    answers written side by side, a token each in turn, streamed as they grow when asked."""
    import time

    chat = warm.gguf(req)
    adapter = req.get("adapter") or None
    sides = (["adapter", "base"] if req.get("compare_base") else ["adapter"]) if adapter \
        else ["base"]
    models = [chat.model(adapter if side == "adapter" else None,
                         lambda: _say(progress=t("chat.progress.converting_adapter")))
              for side in sides]
    tokenizer = chat.tokenizer(req.get("chat_template") or None)  # a preload loads it too
    if not req.get("questions"):
        return {"loaded": True, "engine": "llama.cpp"}
    prompts = [_prompt_ids(tokenizer, q, req.get("system") or "") for q in req["questions"]]
    n = int(req.get("num") or 1)
    rows = [[] for _ in range(len(sides) * len(prompts) * n)]
    send = _partial_sender(tokenizer, chat.stops, sides, len(prompts), n) \
        if req.get("stream") else None
    last = [0.0]

    def on_tokens(row: int, tokens: list[int]) -> None:
        rows[row] = tokens
        if send is not None and time.monotonic() - last[0] >= 0.2:  # the page keeps up
            send(rows)
            last[0] = time.monotonic()

    _say(progress=t("chat.progress.generating"))
    rows = chat.answer(models, prompts, n, int(req.get("max_new_tokens") or 64),
                       _temperature(req), seed=int(req.get("seed") or 0), on_tokens=on_tokens)
    result = _by_side(tokenizer.batch_decode(rows, skip_special_tokens=True), sides,
                      len(prompts), n)
    result["engine"] = "llama.cpp"
    return result


def _temperature(req: dict) -> float:
    """The request's sampling temperature: 0.7 when it names none, 0 for greedy answers."""
    temperature = req.get("temperature")
    return 0.7 if temperature is None else max(0.0, float(temperature))


def _by_side(texts: list[str], sides: list[str], questions: int, n: int) -> dict:
    """Answers in batch order (side major, then question, n each) as {side: [[n texts] per
    question]}, the shape of generate()'s result."""
    per_side = questions * n
    return {side: [texts[k * per_side + i * n:k * per_side + (i + 1) * n]
                   for i in range(questions)] for k, side in enumerate(sides)}


def _partial_sender(tokenizer, stop_ids, sides: list[str], questions: int, n: int):
    """engine.on_partial for a request: each side's answers so far, in the result's shape,
    sent as {"partial": {...}} (a batch split in parts is not shown part by part)."""
    from core.generation import until_stop
    stops = set(stop_ids)

    def send(tokens: list[list[int]]) -> None:
        if len(tokens) != len(sides) * questions * n:
            return
        texts = tokenizer.batch_decode([until_stop(row, stops)[0] for row in tokens],
                                       skip_special_tokens=True)
        _say(partial=_by_side(texts, sides, questions, n))
    return send


def generate(req: dict, warm: WarmModels | None = None) -> dict:
    """{"questions", "system", "num", "max_new_tokens", "temperature", "adapter", "compare_base",
    "stream"} -> {"adapter": [[text]*num per question], "base": [...] (when compared); "engine":
    "vllm" when vLLM answered}. With "stream" (transformers), {"partial": the same shape} lines
    show the answers as they are written. With no questions it only loads the model and the
    adapter (the page does that before the first question): {"loaded": true, "engine": ...}."""
    import torch

    from core.engine_choice import chat_engine
    from core.generation import TransformersEngine
    from core.gguf_chat import GgufChatError, no_paths, too_large, unsupported
    from core.models import resolve_source

    torch.set_num_threads(_threads(req))
    warm = warm or WarmModels()
    chosen = chat_engine(torch.cuda.is_available())
    if chosen == "vllm" and not warm.vllm_failed:
        from core.vllm_engine import VLLMError
        try:
            if not req.get("questions"):
                adapter = req.get("adapter") or None
                engine = warm.vllm(req, _adapter_rank(adapter) if adapter else 0)
                if adapter:  # vLLM reads an adapter with its first request: one token now
                    engine.answer([_prompt_ids(engine.tokenizer, "Hi", "")], [adapter], 1)
                return {"loaded": True, "engine": "vllm"}
            return generate_vllm(req, warm)
        except VLLMError as exc:  # answered by transformers from now on in this process
            warm.vllm_failed = True
            warm.close()
            _say(progress=t("chat.progress.vllm_failed", error=str(exc)[:200]))
    elif chosen == "llama.cpp" and not warm.gguf_failed and \
            not too_large(_model_config(req)):
        refused = unsupported(req["adapter"]) if req.get("adapter") else None
        try:
            if refused:  # this adapter only: transformers answers it
                raise GgufChatError(refused, request_only=True)
            return generate_gguf(req, warm)
        except Exception as exc:  # transformers answers: this request, or from now on here
            if not (isinstance(exc, GgufChatError) and exc.request_only):
                warm.gguf_failed = True
                warm.close()
            _say(progress=t("chat.progress.gguf_failed", error=no_paths(exc)[:200]))
    if not warm.bases:
        _say(progress=t("chat.progress.preparing"))
        resolve_source(req.get("source") or "default")
    loaded, adapter = warm.get(req)
    if not req.get("questions"):
        return {"loaded": True, "engine": "transformers"}
    model, tokenizer = loaded.model, loaded.tokenizer
    model.eval()
    engine = TransformersEngine(model, tokenizer, loaded.device,
                                weights=loaded.generation_context)
    prompts = [_prompt_ids(tokenizer, q, req.get("system") or "") for q in req["questions"]]
    n = int(req.get("num") or 1)
    sides = ["adapter", "base"] if adapter and req.get("compare_base") else \
        ["adapter" if adapter else "base"]
    if req.get("stream"):  # the answers so far, as they are written
        engine.on_partial = _partial_sender(tokenizer, engine.stop_ids, sides, len(prompts), n)

    # temperature 0 asks for the likeliest token every time: this engine's greedy is top-k 1
    temperature = _temperature(req)
    sampling = dict(temperature=temperature or 1.0, top_k=0 if temperature else 1)

    def sample() -> dict:
        gen = engine.generate(prompts, n, int(req.get("max_new_tokens") or 64), **sampling)
        return _by_side(gen.texts, sides, len(prompts), n)

    torch.manual_seed(int(req.get("seed") or 0))
    _say(progress=t("chat.progress.generating"))
    if adapter and req.get("compare_base"):
        # the adapter's answers and the base model's in one batch (peft's mixed adapters):
        # the same greedy tokens as one after the other, 1.2x faster here (bench/chat_speed.py)
        rows = len(prompts) * n
        gen = engine.generate(prompts + prompts, n, int(req.get("max_new_tokens") or 64),
                              **sampling, adapter_names=[adapter] * rows + ["__base__"] * rows)
        return _by_side(gen.texts, sides, len(prompts), n)
    if adapter or not hasattr(model, "peft_config"):
        return sample()
    with model.disable_adapter():
        return sample()


def prepare(req: dict) -> dict:
    """{"source"} -> where the model is and its size: converts or downloads it once."""
    from transformers import AutoConfig

    from core.models import resolve_source
    from studio.estimate import shape_from_config

    _say(progress=t("chat.progress.finding"))
    path = resolve_source(req.get("source") or "default")
    if "/" in path and not path.startswith("/"):
        from huggingface_hub import snapshot_download
        from core.models import ModelError
        _say(progress=t("chat.progress.downloading", model=path))
        try:
            path = snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                           "*.txt", "*.jinja"])
        except Exception as exc:
            raise ModelError(t("chat.error.download", model=path)) from exc
    config = AutoConfig.from_pretrained(path).to_dict()
    return {"path": path, "params": shape_from_config(config).params,
            "model_type": config.get("model_type", "?")}


def export(req: dict) -> dict:
    """{"run_dir", "format", "quant", "checkpoint", "out", "threads"} -> core.export's result:
    the adapter merged into the base (16-bit) or made into GGUF, with each step said in the
    page's language."""
    from core.export import export_run

    def progress(code: str, **values) -> None:
        _say(progress=t(f"export.step.{code}", **values))

    return export_run(req["run_dir"], req["format"], quant=req.get("quant") or "q4_k_m",
                      checkpoint=req.get("checkpoint"), out=req.get("out"), progress=progress,
                      threads=req.get("threads"))


def evaluate(req: dict) -> dict:
    """{"run_dir", "checkpoint", "threads"} -> core.evaluate's result (also written to the run's
    eval.json): base and trained scored on the held-out questions, each step said in the page's
    language."""
    from core.evaluate import evaluate_run

    def progress(code: str, **values) -> None:
        _say(progress=t(f"eval.step.{code}", **values))

    return evaluate_run(req["run_dir"], checkpoint=req.get("checkpoint"),
                        threads=req.get("threads"), progress=progress)


JOBS = {"generate": generate, "prepare": prepare, "export": export, "evaluate": evaluate}


def _answer(req: dict, warm: WarmModels | None = None) -> int:
    lang = req.get("lang")  # the page's: every progress line of this request in its language
    with speaking((pick(lang) if isinstance(lang, str) else None) or DEFAULT):
        try:
            job = req.get("job", "generate")
            result = generate(req, warm) if job == "generate" else JOBS[job](req)
            _say(result=result)
            return 0
        except BaseException as exc:  # the parent shows the line; the traceback behind a toggle
            from core.cli import friendly_error
            from core.export import ExportError

            line = (t(f"export.fail.{exc.code}", **exc.values) if isinstance(exc, ExportError)
                    else friendly_error(exc))
            _say(error=line, traceback=traceback.format_exc())
            return 1


def serve() -> int:
    """`python -m studio.infer --serve`: one JSON request per line on stdin, answered in turn
    with the models kept loaded in between; ends when stdin closes."""
    warm = WarmModels()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except ValueError:
            _say(error=t("chat.error.not_json"), traceback="")
            continue
        _answer(req, warm)
        _say(done=True)
    warm.close()
    return 0


def main() -> int:
    if "--serve" in sys.argv[1:]:
        return serve()
    try:
        req = json.loads(sys.stdin.read() or "{}")
    except ValueError:
        _say(error=t("chat.error.not_json"), traceback="")
        return 1
    return _answer(req)


if __name__ == "__main__":
    sys.exit(main())
