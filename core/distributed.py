"""One run on several processes: what the trainer asks of them, through accelerate.

`accelerate launch --multi_gpu --num_processes N -m core train ...` starts N copies of the
worker; each builds a `World` that says which one it is. A world of size 1 (a plain
`python -m core train`) never imports accelerate nor touches torch.distributed: every method
then returns its input.

Data parallelism, as the trainer uses it (docs/SCALING.md):
- every process draws the same global batch of prompts (same seed, same order) and keeps its
  contiguous share, so a prompt's group of completions stays on one process;
- sampling is keyed by (seed, step, global completion index), never by a process's random
  stream, so which process draws a completion does not change it;
- rewards and generation figures are gathered (a few numbers and texts per completion), so the
  advantages, metrics and samples are those of the global batch, computed alike everywhere;
- gradients are averaged by DistributedDataParallel once per step (the passes before the last
  run under `no_sync`), so each process may cut its share into a different number of passes;
- only the main process writes events, progress, samples, checkpoints and the adapter.

Sharded (FSDP: `accelerate launch --use_fsdp`, or an accelerate config with FSDP): every process
holds a 1/N slice of each weight, base included, through torch's FSDP2 (`fully_shard`, one unit
per decoder layer plus the rest), on GPUs and, with gloo, on the CPU (where accelerate itself
would fall back to plain data parallelism). Every forward pass is then a collective: generation
runs in step on all processes (`synced_gpus`), passes are cut alike everywhere, every process
evaluates, and the adapter and optimizer state are gathered whole before the main process writes
them, in the same format as one process writes (a checkpoint resumes on any number of
processes, sharded or not).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path

import torch

from .runs import pid_alive

# How long a process waits in a collective for the others. A process that dies is noticed
# sooner, when its connection closes; this bounds a process that hangs, and must exceed the
# longest wait one process has for another: an evaluation on the main process, or a step's
# generation that runs longer on one process than on the other.
DEFAULT_TIMEOUT_S = 1800
# How long a process on this machine may be gone before the watchdog ends this one (NCCL does
# not notice a dead peer: a survivor would wait in its collective until the timeout above).
WATCHDOG_GRACE_S = 5.0


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (accelerate launch --use_fsdp, or its config's
    distributed_type FSDP: accelerate passes both on as ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1", "yes")


def reshard_after_forward() -> bool:
    """accelerate's fsdp_reshard_after_forward (FSDP2: true/false; FSDP1's sharding strategy
    names: only FULL_SHARD frees a layer's gathered weights after its forward pass)."""
    value = os.environ.get("FSDP_RESHARD_AFTER_FORWARD") or \
        os.environ.get("FSDP_SHARDING_STRATEGY") or "true"
    return value.strip().lower() in ("true", "1", "yes", "full_shard")


class PeerLost(RuntimeError):
    """A collective failed: another process of the run ended, hung or could not be reached."""


def launched_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE") or 1))
    except ValueError:
        return 1


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 without a launcher)."""
    for name in ("RANK", "LOCAL_RANK"):
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return 0


class World:
    """This process's place among the run's processes."""

    def __init__(self):
        self.size = launched_size()
        self.rank, self.local_rank, self.local_size = 0, 0, 1
        self.accelerator = None
        self.sharded = False
        if self.size > 1:
            from accelerate import Accelerator, InitProcessGroupKwargs

            timeout = int(os.environ.get("AHA_DIST_TIMEOUT") or DEFAULT_TIMEOUT_S)
            # mixed precision and compilation off whatever the user's accelerate config says:
            # the run's precision is its own (model.precision)
            self.accelerator = Accelerator(
                cpu=not torch.cuda.is_available(), mixed_precision="no", dynamo_backend="no",
                kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout))])
            kind = str(self.accelerator.distributed_type).rsplit(".", 1)[-1]
            if kind not in ("MULTI_CPU", "MULTI_GPU", "FSDP", "NO"):
                from .config import ConfigError
                raise ConfigError("launch_unsupported", kind=kind)
            # on the CPU accelerate keeps FSDP settings but trains MULTI_CPU: sharded either way
            self.sharded = kind == "FSDP" or fsdp_requested()
            if self.sharded:
                # accelerate's default for --use_fsdp has transformers load real weights on
                # local rank 0 only and expects them broadcast; here every process loads them
                os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
            self.size = self.accelerator.num_processes
            self.rank = self.accelerator.process_index
            self.local_rank = self.accelerator.local_process_index
            self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE") or self.size)
            # who is who, so that a process can tell which of the others has gone
            self.peers = self.gather((socket.gethostname(), os.getpid()))
        else:
            self.peers = [(socket.gethostname(), os.getpid())]
        self._watching = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def sharding(self) -> str | None:
        """How the weights are spread: "fsdp" (each process a slice), or None (whole on each)."""
        return "fsdp" if self.sharded else None

    @property
    def backend(self) -> str | None:
        if not self.distributed:
            return None
        return torch.distributed.get_backend()

    def device(self) -> torch.device | None:
        """The device this process trains on: its own GPU, or None to let the loader choose."""
        if self.distributed and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return None

    def load_device(self) -> torch.device | None:
        """Where the model is loaded: sharded, on the CPU (the shards then go to this
        process's device, one layer at a time, so that the whole model never has to fit it)."""
        return torch.device("cpu") if self.sharded else self.device()

    def threads(self, cpus: int) -> int:
        """CPU threads for this process: the machine's usable cores shared among the processes
        on it (torch's default would give each process every core); 0 stays 0 (torch's
        default)."""
        return max(1, cpus // self.local_size) if cpus else 0

    def share(self, items: list) -> list:
        """This process's contiguous share of a global list (its length divisible by size)."""
        n = len(items) // self.size
        return items[self.rank * n:(self.rank + 1) * n]

    # ---- collectives (identity in a world of one) -------------------------------------------
    @contextmanager
    def guard(self, active: bool = True):
        """Inside: a failing collective raises PeerLost (a real error, such as running out of
        memory, passes as it is)."""
        if not (active and self.distributed):
            yield
            return
        try:
            yield
        except RuntimeError as exc:
            if isinstance(exc, (PeerLost, torch.OutOfMemoryError)):
                raise
            if not (self.gone() or _lost_touch(exc)):
                raise  # a real error in the work inside, not in reaching the others
            lines = str(exc).strip().splitlines()
            raise PeerLost(lines[0] if lines else type(exc).__name__) from exc

    def gather(self, obj) -> list:
        """Every process's `obj`, in rank order, on every process (tensors in it should be on
        the CPU: they arrive on the device they left from)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size
        with self.guard():
            torch.distributed.all_gather_object(out, obj)
        return out

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the processes (float64, so counts stay exact)."""
        return self._reduce(values, "SUM")

    def max(self, values: list[float]) -> list[float]:
        return self._reduce(values, "MAX")

    def _reduce(self, values: list[float], op: str) -> list[float]:
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        with self.guard():
            torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op))
        return t.tolist()

    def min(self, value: int) -> int:
        """The smallest of the processes' values (what all of them can do alike)."""
        return int(-self._reduce([-float(value)], "MAX")[0])

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one (a stop asked of one stops them all)."""
        return bool(self.max([1.0 if flag else 0.0])[0])

    def barrier(self) -> None:
        if self.distributed:
            with self.guard():
                torch.distributed.barrier()

    def _collective_device(self) -> torch.device:
        return self.accelerator.device if self.accelerator is not None else torch.device("cpu")

    # ---- the model --------------------------------------------------------------------------
    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` under DistributedDataParallel (a world of one: as it is). Only the trainable
        parameters take part: the frozen base (4-bit or not) is loaded alike by every process
        and is never broadcast. Sharded: under FSDP2 instead (see `shard`)."""
        if not self.distributed:
            return module
        if self.sharded:
            return self.shard(module)
        from torch.nn.parallel import DistributedDataParallel

        frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
        frozen += [name for name, _ in module.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
        return self.accelerator.prepare_model(module, device_placement=False)

    def shard(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` sharded with torch's FSDP2 over this run's processes: each decoder layer (the
        model's own `_no_split_modules`) is a unit, gathered for its forward and backward pass
        and freed after (unless accelerate's config says fsdp_reshard_after_forward: false), and
        the rest (embeddings, final norm, output head) is the root unit. Frozen and trainable
        weights shard alike; gradients are averaged over the processes (reduce-scatter) in every
        backward pass."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        kind = "cuda" if torch.cuda.is_available() else "cpu"
        mesh = init_device_mesh(kind, (self.size,))
        names = set()
        for sub in module.modules():
            names.update(getattr(sub, "_no_split_modules", None) or ())
        free = reshard_after_forward()
        for sub in module.modules():
            if type(sub).__name__ in names:
                fully_shard(sub, mesh=mesh, reshard_after_forward=free)
        fully_shard(module, mesh=mesh, reshard_after_forward=free)
        # FSDP settles which unit is the root at the first forward pass through it; generation
        # runs the decoder layers before that (not through the root), so settle it now
        state = getattr(module, "_get_fsdp_state", None)
        if state is not None and hasattr(state(), "_lazy_init"):
            state()._lazy_init()
        return module

    @contextmanager
    def gathered(self, wrapped: torch.nn.Module | None):
        """Inside: the root unit's weights whole on every process, for a use of the model that
        does not go through the wrapped module's own forward (generation calls the model
        inside it; its decoder layers gather their own weights as they run)."""
        if not self.sharded or wrapped is None:
            yield
            return
        with self.guard():  # every forward pass inside is a collective too
            wrapped.unshard()
            try:
                yield
            finally:
                self.reshard(wrapped)

    def reshard(self, wrapped: torch.nn.Module | None) -> None:
        """Free every gathered unit after passes without a backward (generation, log-probs
        that stay fixed): with fsdp_reshard_after_forward false a layer is otherwise freed only
        by a backward pass, and the whole model would stay gathered on every process."""
        if not self.sharded or wrapped is None:
            return
        from torch.distributed.fsdp import FSDPModule

        for sub in wrapped.modules():
            if isinstance(sub, FSDPModule):
                sub.reshard()

    def full_tensors(self, tensors: dict) -> dict:
        """`tensors` with every shard made whole (a collective: every process calls it with the
        same keys, in the same order), on the CPU."""
        out = {}
        with self.guard(self.sharded):
            for key, value in tensors.items():
                if hasattr(value, "full_tensor"):
                    value = value.full_tensor()
                out[key] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
        return out

    def full_optimizer_state(self, optimizer) -> dict:
        """optimizer.state_dict() with whole tensors, as one process would save it."""
        state = optimizer.state_dict()
        if not self.sharded:
            return state
        state["state"] = {index: self.full_tensors(values)
                          for index, values in state["state"].items()}
        return state

    def shard_optimizer_state(self, optimizer) -> None:
        """After optimizer.load_state_dict of whole tensors (saved by any number of processes):
        each parameter's state cut to the parameter's own shard."""
        if not self.sharded:
            return
        from torch.distributed.tensor import distribute_tensor

        for group in optimizer.param_groups:
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                for key, value in list(state.items()):
                    if hasattr(p, "device_mesh") and isinstance(value, torch.Tensor) and \
                            not hasattr(value, "device_mesh") and value.shape == p.shape:
                        # every process holds the same whole tensor: each keeps its own slice
                        state[key] = distribute_tensor(value.to(p.device), p.device_mesh,
                                                       p.placements, src_data_rank=None)

    def no_sync(self, wrapped: torch.nn.Module, last: bool):
        """Inside: backward passes keep their gradients local, except the step's last, which
        averages the sum of them all over the processes."""
        if last or not hasattr(wrapped, "no_sync"):
            return nullcontext()
        return wrapped.no_sync()

    def gone(self) -> list[int]:
        """Ranks of the processes on this machine that are no longer running."""
        here = socket.gethostname()
        return [rank for rank, (host, pid) in enumerate(self.peers)
                if host == here and rank != self.rank and not pid_alive(pid)]

    def writes_failure(self, lost: bool, run_dir: Path, since: float) -> bool:
        """Whether this process writes the run's failure: one reason per failure, from where it
        went wrong. The main process writes its own error at once. A process that only saw
        another one go writes when it is the first still running, unless that one said why;
        another process's own error is written unless the main process has written one (it may
        share it: a bad setting fails them all)."""
        if not self.distributed:
            return True
        if lost:
            said = failed_since(run_dir, since)  # meanwhile the process that went is gone
            gone = self.gone()
            first = min(r for r in range(self.size) if r not in gone)
            return self.rank == first and not said
        return self.is_main or not failed_since(run_dir, since)

    def watch_peers(self, on_lost) -> None:
        """A watchdog thread: when a process of this run on this machine has been gone for
        WATCHDOG_GRACE_S while this one still trains (stuck in a collective that will not
        return), `on_lost(ranks)` is called; it should end this process."""
        if not self.distributed or self._watching:
            return
        self._watching = True

        def watch():
            since = None
            while self._watching:
                gone = self.gone()
                since = (since or time.monotonic()) if gone else None
                if since is not None and time.monotonic() - since >= WATCHDOG_GRACE_S:
                    if self._watching:
                        on_lost(gone)
                    return
                time.sleep(1.0)

        threading.Thread(target=watch, name="aha-peer-watchdog", daemon=True).start()

    def stop_watching(self) -> None:
        """Training is over here (finished, or failing with its own reason): the others may
        end before this process does."""
        self._watching = False

    def close(self) -> None:
        """Let go of the wrapped model (accelerate keeps it too), then of the process group: a
        DDP reducer that outlives its group aborts the process as it exits."""
        if self.accelerator is not None:
            self.accelerator.free_memory()
            import gc
            gc.collect()
        if self.distributed and torch.distributed.is_initialized():
            try:
                torch.distributed.destroy_process_group()
            except Exception:  # a peer that died already: nothing left to close
                pass


# What the error of a collective says when the other end has gone (gloo, NCCL, the store)
_LOST_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "broken pipe",
               "reset by peer", "closed by peer", "store", "watchdog")


def _lost_touch(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in _LOST_WORDS)


def failed_since(run_dir: Path, since: float, wait: float = 1.0) -> bool:
    """Whether a process of this run wrote its failure since `since` (given `wait` seconds to
    finish writing it)."""
    from .events import read_events

    time.sleep(wait)
    return any(e.get("type") == "status" and e.get("state") == "failed"
               and e.get("time", 0) >= since for e in read_events(run_dir)[0])


def lost_message(world: World, gone: list[int]) -> str:
    who = ", ".join(str(r + 1) for r in gone)
    return (f"Training process {who} of {world.size} ended unexpectedly, so the run stopped. "
            f"Resume it to go on from its last checkpoint.")


def peer_failure(exc: BaseException, world: World) -> str | None:
    """The one line for a run that stopped because another of its processes ended or stopped
    answering (None for any other failure)."""
    if not (world.distributed and isinstance(exc, PeerLost)):
        return None
    text = str(exc)
    # a connection closes while its process is still ending: give it a moment to be gone
    deadline = time.monotonic() + 2.0
    gone = world.gone()
    while not gone and time.monotonic() < deadline:
        time.sleep(0.1)
        gone = world.gone()
    if gone:
        return lost_message(world, gone)
    if "imed out" in text:
        return ("A training process did not answer within the time limit (AHA_DIST_TIMEOUT), "
                "so the run stopped. Resume it to go on from its last checkpoint.")
    return ("The training processes lost touch with each other, so the run stopped. Resume it "
            "to go on from its last checkpoint.")


class SilentLog:
    """The event log of a process that is not the main one: events are computed, not written."""

    def __init__(self):
        self.listeners: list = []

    def emit(self, type: str, **fields) -> dict:
        return {"type": type, **fields}

    def close(self) -> None:
        pass


class SilentProgress:
    """The progress file of a process that is not the main one: nothing is written."""

    def phase(self, *args, **fields) -> None:
        pass

    def update(self, **fields) -> None:
        pass

    def clear(self) -> None:
        pass
