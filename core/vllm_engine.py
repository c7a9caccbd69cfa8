"""The vLLM generation engine: the same `generate` as the transformers engine, answered by a vLLM
process (core.vllm_server) that keeps the base model loaded and takes the trainer's current
weights before each batch, without a restart.

Where vLLM comes from, first found: `AHA_VLLM_PYTHON` (a Python that has vLLM), the project's
`.venv-vllm` (made by `bash scripts/setup.sh --vllm`; vLLM's pins differ from ours, so it lives
in its own environment), or this Python when it imports vLLM.

How the weights travel (generation.vllm_weight_sync): after each optimizer step the trainer
marks the weights changed, and before the next generation vLLM takes the new ones, without a
restart, by one of two routes, both through a private folder in shared memory (`/dev/shm` where
there is one and it has room, so no disk is touched):
- lora: the adapter in peft's format, which vLLM reloads in place under the same adapter id
  (`LoRARequest(load_inplace=True)`) and applies while it generates. Little to write (a few
  hundredths of a second for the embedded model's adapter), but vLLM's CPU adapter path
  generated 2.1-2.5x slower than merged weights in GRPO steps here.
- merged: the weights vLLM would compute with, the trainer's base (a 4-bit layer dequantized,
  so vLLM samples from the base the trainer learns on, rounded to vLLM's precision) plus the
  adapter's product (peft's `get_delta_weight`), as safetensors in checkpoint names; vLLM
  reloads them in place (`reload_weights(weights_path=...)`, its supported route) and drops the
  prefix cache computed with the old ones. The frozen rest of the model (embeddings, norms,
  layers without an adapter) is written once; each update rewrites only the adapted layers
  (about 0.2 GB for the embedded model in bfloat16).
bench/vllm_engine.py measures both.

`ColocatedVLLMEngine` (generation.vllm_mode: colocate) answers the same requests from vLLM inside
the training process, optionally asleep while the policy updates (GPUs only).
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from .engine_choice import vllm_importable, vllm_python
from .generation import Generation, base_weight_count
from .models import save_adapter_files, stop_token_ids
from .runs import PROJECT_ROOT, child_env, usable_cpus
from .vllm_server import _line

START_TIMEOUT_S = 600  # loading the model and vLLM's start-up; eager mode starts in ~20 s here
GENERATE_TIMEOUT_S = 1800


class VLLMError(RuntimeError):
    """The vLLM process failed, hung or ended; the message is one line."""


def unmergeable(model, model_path: str | None = None) -> str | None:
    """Why a model's adapter cannot reach vLLM as merged weights (None: it can): what the plain
    sum base + B A does not give (DoRA and peft's other variants, adapter biases), weights
    trained beside the adapter, an adapted embedding or head that the other one is tied to
    (vLLM keeps one matrix for both), or names the base checkpoint does not have (models whose
    layers transformers renames or fuses on loading)."""
    from peft.tuners.lora import LoraLayer
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for a in module.active_adapters:
            if module.use_dora.get(a) or a in getattr(module, "lora_variant", {}):
                return "a DoRA (or other variant) adapter"
            if getattr(module, "lora_bias", {}).get(a):
                return "an adapter with biases"
        if tied and name.split(".")[-1] in ("embed_tokens", "lm_head", "wte", "embed_in",
                                            "embed_out"):
            return "an adapter on an embedding tied to the output head"
    for name, param in model.named_parameters():
        if param.requires_grad and "lora_" not in name:
            return f"weights trained beside the adapter ({_checkpoint_name(name)})"
    if model_path:
        known = checkpoint_names(model_path)
        names = set(merged_weights(model, None, changing=True, names_only=True)) | set(
            merged_weights(model, None, changing=False, names_only=True))
        if known is not None and not names <= known:
            return f"weight names the checkpoint does not have ({sorted(names - known)[0]})"
    return None


def checkpoint_names(model_path: str) -> set[str] | None:
    """The tensor names in a model folder's safetensors files (their headers only)."""
    from safetensors import safe_open
    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        return None
    names: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            names.update(handle.keys())
    return names


def _checkpoint_name(name: str) -> str:
    """A parameter's name in the base model's checkpoint (what vLLM's load_weights reads)."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name.replace(".base_layer.", ".")


def _base_weight(param) -> torch.Tensor:
    """A frozen weight as the trainer computes with it: a 4-bit one dequantized."""
    state = getattr(param, "quant_state", None)
    if state is not None:
        from peft.utils.integrations import dequantize_bnb_weight
        return dequantize_bnb_weight(param, state=state)
    return param.detach()


@torch.no_grad()
def merged_weights(model, dtype: torch.dtype | None, *, changing: bool,
                   names_only: bool = False) -> dict[str, torch.Tensor | None]:
    """The model's weights as vLLM should hold them (on the CPU, in `dtype`), by checkpoint
    name. changing=True: each adapted layer's base (a 4-bit one dequantized) plus its
    adapter's product (peft's get_delta_weight); False: the frozen rest, written once. vLLM
    reads both each time (a fused layer such as qkv_proj takes all its parts from the files).
    names_only: the names, each mapped to None."""
    from peft.tuners.lora import LoraLayer
    out: dict[str, torch.Tensor | None] = {}
    adapted = set()
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        key = _checkpoint_name(name) + ".weight"
        adapted.add(key)
        if changing and names_only:
            out[key] = None
        elif changing:
            weight = _base_weight(module.get_base_layer().weight).to(torch.float32)
            for adapter in module.active_adapters:
                if adapter in module.lora_A or adapter in module.lora_embedding_A:
                    weight = weight + module.get_delta_weight(adapter).to(torch.float32)
            out[key] = weight.to(dtype).cpu().contiguous()
    if changing:
        return out
    for name, param in model.named_parameters():
        key = _checkpoint_name(name)
        if "lora_" in name or key in adapted:
            continue
        out[key] = None if names_only else _base_weight(param).to(dtype).cpu().contiguous()
    return out


def _threads() -> str:
    """The cores vLLM's CPU worker binds to: all this process may use."""
    return ",".join(map(str, usable_cpus()))


class VLLMEngine:
    name = "vllm"
    mode = "server"  # generation.vllm_mode
    sleep = False    # asleep between batches (colocated on a GPU only)

    def __init__(self, model, tokenizer, device: torch.device, model_path: str, *,
                 lora_rank: int = 0, dtype: str = "bfloat16", seed: int = 0,
                 max_model_len: int = 2048, max_num_seqs: int = 64,
                 kv_cache_gb: float | None = None, gpu_memory_utilization: float = 0.0,
                 log_path: str | Path | None = None, python: str | None = None,
                 max_loras: int = 1, weight_sync: str = "lora"):
        python = python or vllm_python()
        if python is None:
            raise VLLMError("vLLM is not installed: run bash scripts/setup.sh --vllm, or choose "
                            "generation.engine: transformers.")
        self._setup(model, tokenizer, device, lora_rank, dtype, weight_sync)
        lora_rank = self.lora_rank  # none when the weights travel merged
        socket = str(self._dir / "channel")
        key = secrets.token_bytes(32)
        env = child_env(AHA_VLLM_KEY=key.hex(), TOKENIZERS_PARALLELISM="false",
                        VLLM_LOGGING_LEVEL="WARNING",
                        VLLM_CPU_OMP_THREADS_BIND=os.environ.get("VLLM_CPU_OMP_THREADS_BIND",
                                                                 _threads()),
                        VLLM_CPU_NUM_OF_RESERVED_CPU=os.environ.get(
                            "VLLM_CPU_NUM_OF_RESERVED_CPU", "0"),
                        VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE",
                                                              str(kv_cache_gb or 1)))
        cmd = [python, "-m", "core.vllm_server", "--socket", socket, "--model", str(model_path),
               "--dtype", dtype, "--seed", str(seed), "--max-model-len", str(max_model_len),
               "--max-num-seqs", str(max_num_seqs), "--max-lora-rank", str(lora_rank),
               "--max-loras", str(max_loras)]
        if gpu_memory_utilization:
            cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
        self.log_path = Path(log_path) if log_path else self._dir / "vllm.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if log_path:  # beside its log: which process serves this run
            (self.log_path.parent / "vllm.pid").write_text(str(self.proc.pid))
        self.conn = None
        try:
            self.conn = self._connect(socket, key.hex().encode())
            reply = self._recv(START_TIMEOUT_S, "starting")
            if not reply.get("ok"):
                raise VLLMError(f"vLLM could not start: {reply.get('error')}")
        except BaseException:
            self.close()
            raise

    def _setup(self, model, tokenizer, device, lora_rank: int, dtype: str,
               weight_sync: str) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.weight_sync = weight_sync  # "lora" or "merged" (generation.vllm_weight_sync)
        self.lora_rank = 0 if weight_sync == "merged" else lora_rank
        self.dtype = getattr(torch, dtype)
        self.version = 0          # bumped when the trainer changed the weights
        self._sent_version = None
        self.last_update_s = 0.0  # seconds the last batch's new weights took to reach vLLM
        # (lora: writing the adapter, which vLLM reads as it generates; merged: writing the
        # weights and vLLM's reload)
        self._dir = Path(tempfile.mkdtemp(prefix="aha-vllm-", dir="/dev/shm"
                                          if Path("/dev/shm").is_dir() else None))
        os.chmod(self._dir, 0o700)
        self.adapter_dir = self._dir / "adapter"

    # ---- the channel ----------------------------------------------------------------------
    def _connect(self, socket: str, key: bytes):
        from multiprocessing.connection import Client
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            self._check_alive("starting")
            if Path(socket).exists():
                try:
                    return Client(socket, family="AF_UNIX", authkey=key)
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
            if time.monotonic() > deadline:
                raise VLLMError(f"vLLM did not start within {START_TIMEOUT_S} s; see "
                                f"{self.log_path}")
            time.sleep(0.2)

    def _check_alive(self, doing: str) -> None:
        code = self.proc.poll()
        if code is not None:
            raise VLLMError(f"The vLLM process ended while {doing} (exit code {code}); see "
                            f"{self.log_path}")

    def _recv(self, timeout: float, doing: str) -> dict:
        deadline = time.monotonic() + timeout
        while not self.conn.poll(1.0):
            self._check_alive(doing)
            if time.monotonic() > deadline:
                raise VLLMError(f"vLLM gave no answer within {timeout:.0f} s while {doing}; "
                                f"see {self.log_path}")
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self._check_alive(doing)
            raise VLLMError(f"The channel to vLLM closed while {doing}; see {self.log_path}")

    def _ask(self, request: dict, timeout: float, doing: str) -> dict:
        try:
            self.conn.send(request)
        except (OSError, ValueError):
            self._check_alive(doing)
            raise VLLMError(f"The channel to vLLM closed while {doing}; see {self.log_path}")
        reply = self._recv(timeout, doing)
        if not reply.get("ok"):
            raise VLLMError(f"vLLM failed while {doing}: {reply.get('error')}")
        return reply

    # ---- weights ----------------------------------------------------------------------------
    def mark_weights_changed(self) -> None:
        self.version += 1

    def _weights_dir(self) -> Path:
        """The folder the merged weights go to: in shared memory when it has room for the whole
        model in vLLM's precision and a tenth more (Docker gives /dev/shm 64 MB), else a private
        folder on disk (which the vLLM process removes if the trainer is gone)."""
        if getattr(self, "_merged_dir", None) is None:
            need = base_weight_count(self.model) * self.dtype.itemsize
            folder = self._dir / "weights"
            if shutil.disk_usage(self._dir).free < 1.1 * need:
                folder = Path(tempfile.mkdtemp(prefix="aha-vllm-weights-"))
                self._spill = folder
            folder.mkdir(mode=0o700, exist_ok=True)
            self._merged_dir = folder
        return self._merged_dir

    def _send_merged(self) -> None:
        """The merged route: the changing weights written (the frozen rest the first time),
        then vLLM reloads the folder in place. The files are rewritten in place: vLLM reads them
        only when asked, after they are complete."""
        from safetensors.torch import save_file
        if self._sent_version == self.version:
            self.last_update_s = 0.0
            return
        start = time.perf_counter()
        try:
            folder = self._weights_dir()
            if not (folder / "rest.safetensors").exists():
                save_file(merged_weights(self.model, self.dtype, changing=False),
                          folder / "rest.safetensors")
            (folder / "changing.safetensors").unlink(missing_ok=True)
            save_file(merged_weights(self.model, self.dtype, changing=True),
                      folder / "changing.safetensors")
        except (OSError, RuntimeError) as exc:  # a full /dev/shm or disk, above all
            raise VLLMError(f"The weights for vLLM could not be written: {_line(exc)}") from exc
        self._ask({"op": "load_weights", "path": str(folder)}, GENERATE_TIMEOUT_S,
                  "taking the new weights")
        self._sent_version = self.version
        self.last_update_s = time.perf_counter() - start

    def _adapter(self) -> dict | None:
        if self.weight_sync == "merged" and self.model is not None:
            self._send_merged()
            return None
        if not self.lora_rank:
            return None
        if self._sent_version != self.version:
            start = time.perf_counter()
            tmp = self._dir / "adapter.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_adapter_files(self.model, tmp)
            shutil.rmtree(self.adapter_dir, ignore_errors=True)
            tmp.rename(self.adapter_dir)
            self._sent_version = self.version
            self.last_update_s = time.perf_counter() - start
        else:
            self.last_update_s = 0.0
        return {"name": "policy", "path": str(self.adapter_dir), "version": self.version}

    # ---- generation -------------------------------------------------------------------------
    def generate(self, prompts, num_generations, max_new_tokens, temperature=1.0, top_p=1.0,
                 top_k=0, min_new_tokens: int = 0) -> Generation:
        # drawn from torch's global generator: the run's seed (and a resume's saved RNG state)
        # decides what vLLM samples, as it does for the transformers engine
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
        reply = self._ask({"op": "generate", "prompts": [list(map(int, p)) for p in prompts],
                           "n": num_generations, "max_tokens": max_new_tokens,
                           "temperature": temperature, "top_p": top_p, "top_k": top_k,
                           "min_tokens": min_new_tokens, "seed": seed,
                           "stop_token_ids": self.stop_ids, "lora": self._adapter()},
                          GENERATE_TIMEOUT_S, "generating")
        expanded = [list(p) for p in prompts for _ in range(num_generations)]
        texts = self.tokenizer.batch_decode(reply["completions"], skip_special_tokens=True)
        return Generation(expanded, reply["completions"], texts, reply["truncated"],
                          reply["logprobs"], reply["seconds"])

    def answer(self, prompts, adapters: list, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0, top_k: int = 0, min_new_tokens: int = 0,
               seed: int = 0, n: int = 1) -> Generation:
        """n answers per prompt (prompt major), each prompt from its own saved adapter (a peft
        folder; None: the base model), all in one batch: how the studio's chat and a
        classroom's many adapters share one vLLM process. A folder whose weights were written
        again is read again."""
        loras = []
        for folder in adapters:
            if folder is None:
                loras.append(None)
                continue
            weights = Path(folder) / "adapter_model.safetensors"
            loras.append({"name": f"folder:{Path(folder).resolve()}", "path": str(folder),
                          "version": weights.stat().st_mtime_ns if weights.exists() else 0})
        reply = self._ask({"op": "generate", "prompts": [list(map(int, p)) for p in prompts],
                           "n": n, "max_tokens": max_new_tokens, "temperature": temperature,
                           "top_p": top_p, "top_k": top_k, "min_tokens": min_new_tokens,
                           "seed": seed, "stop_token_ids": self.stop_ids, "loras": loras},
                          GENERATE_TIMEOUT_S, "answering")
        texts = self.tokenizer.batch_decode(reply["completions"], skip_special_tokens=True)
        return Generation([list(p) for p in prompts for _ in range(n)], reply["completions"],
                          texts, reply["truncated"], reply["logprobs"], reply["seconds"])

    @property
    def alive(self) -> bool:
        return self.conn is not None and self.proc.poll() is None

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.send({"op": "shutdown"})
                if self.conn.poll(10):
                    self.conn.recv()
            except (OSError, EOFError, ValueError):
                pass
            self.conn.close()
            self.conn = None
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                import signal
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self._log.close()
        self._remove_folders()

    def _remove_folders(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
        if getattr(self, "_spill", None) is not None:
            shutil.rmtree(self._spill, ignore_errors=True)

    def __del__(self):
        try:
            if getattr(self, "proc", None) is not None and self.proc.poll() is None:
                self.close()
        except Exception:
            pass


class ColocatedVLLMEngine(VLLMEngine):
    """vLLM inside the training process (generation.vllm_mode: colocate), as TRL's colocate mode
    runs it: the same requests as the vLLM process answers (core.vllm_server.Server), called
    directly; the adapter travels the same way (a peft folder in shared memory, reloaded in
    place). With `sleep` (GPUs only), vLLM hands back its memory between two batches while the
    policy updates (LLM.sleep(level=1): the base weights to the CPU, the KV cache dropped; the
    LoRA adapter is read again after each wake-up anyway) and takes it again to generate
    (LLM.wake_up). The run's Python must have vLLM and the trainer's packages (the vLLM
    environment built by scripts/setup.sh --vllm has both)."""
    mode = "colocate"

    def __init__(self, model, tokenizer, device: torch.device, model_path: str, *,
                 lora_rank: int = 0, dtype: str = "bfloat16", seed: int = 0,
                 max_model_len: int = 2048, max_num_seqs: int = 64,
                 kv_cache_gb: float | None = None, gpu_memory_utilization: float = 0.0,
                 max_loras: int = 1, sleep: bool = False, weight_sync: str = "lora"):
        self.llm = None
        if not vllm_importable():
            raise VLLMError("generation.vllm_mode colocate runs vLLM inside the training "
                            "process, but this Python has no vLLM: train with the vLLM "
                            "environment's Python (.venv-vllm/bin/python -m core train ...), or "
                            "set generation.vllm_mode to server.")
        self._setup(model, tokenizer, device, lora_rank, dtype, weight_sync)
        lora_rank = self.lora_rank
        self.sleep = bool(sleep and device.type == "cuda")
        # vLLM reads its CPU settings from the environment; the caller's own settings win
        for name, value in (("VLLM_CPU_OMP_THREADS_BIND", _threads()),
                            ("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"),
                            ("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gb or 1))),
                            ("VLLM_LOGGING_LEVEL", "WARNING"),
                            ("TOKENIZERS_PARALLELISM", "false")):
            os.environ.setdefault(name, value)
        from argparse import Namespace

        from .vllm_server import Server, build_llm
        args = Namespace(model=str(model_path), dtype=dtype, seed=seed,
                         max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                         max_lora_rank=lora_rank, max_loras=max_loras,
                         gpu_memory_utilization=gpu_memory_utilization,
                         enable_sleep_mode=self.sleep)
        try:
            self.server = Server(build_llm(args))
        except Exception as exc:
            self._remove_folders()
            raise VLLMError(f"vLLM could not start: {_line(exc)}") from exc
        self.llm = self.server.llm
        self.sleeping = False
        self._rest()

    def _rest(self) -> None:
        if self.sleep and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def _ask(self, request: dict, timeout: float, doing: str) -> dict:
        if self.llm is None:
            raise VLLMError(f"vLLM was closed before {doing}")
        try:
            if self.sleeping:
                self.llm.wake_up()
                self.sleeping = False
            reply = self.server.handle(request)
            if request.get("op") != "load_weights":  # a generation follows at once
                self._rest()
        except Exception as exc:  # vLLM's own failures (its engine gone, out of memory)
            raise VLLMError(f"vLLM failed while {doing}: {_line(exc)}") from exc
        return reply

    @property
    def alive(self) -> bool:
        return self.llm is not None

    def close(self) -> None:
        if self.llm is not None:
            self.llm = self.server = None
            import gc
            gc.collect()  # vLLM ends its engine when the LLM object goes
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self._remove_folders()

