"""Command line: `python -m core train ...`, `eval ...`, `export ...`, `data check ...`."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path


def friendly_error(exc: BaseException) -> str:
    """One line a beginner can act on."""
    from .config import ConfigError
    from .data import DataError
    from .export import ExportError
    from .models import ModelError
    from .vllm_engine import VLLMError

    known = (ConfigError, DataError, ExportError, ModelError, VLLMError)
    try:
        from reward_templates import RewardError
        known += (RewardError,)
    except ImportError:
        pass
    if isinstance(exc, known):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return ("Ran out of memory: lower prompts_per_step, num_generations or "
                "max_completion_length, or raise gradient_accumulation_steps.")
    if isinstance(exc, KeyboardInterrupt):
        return "Interrupted."
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'unexpected error'}"


def said_of(exc: BaseException | None) -> dict | None:
    """A core error's message id and values ({"kind", "id", "params"}), written beside its
    English line in a failed run's events so that a page can say it in its own language; None
    for an error that has none."""
    kind = {"ConfigError": "config", "DataError": "data"}.get(type(exc).__name__)
    if kind is None or not getattr(exc, "msg_id", None):
        return None
    said = {"kind": kind, "id": exc.msg_id, "params": exc.params}
    try:
        json.dumps(said)
    except (TypeError, ValueError):
        return None
    return said


def cmd_train(args) -> int:
    from .config import RunConfig, apply_overrides
    from .distributed import World, launched_rank, lost_message, peer_failure
    from .events import EventLog
    from .trainer import Trainer

    run_dir = Path(args.run_dir)
    started = time.time()
    try:
        world = World()  # one process, or one of those `accelerate launch` started
    except BaseException as exc:  # the processes could not meet, or a launch not supported
        message = friendly_error(exc)
        if launched_rank() == 0:
            write_failure(EventLog(run_dir), message, close=True, said=said_of(exc))
        print(f"error: {message}", file=sys.stderr)
        return 1
    # only the main process writes events; another one does when the main one is gone
    events = EventLog(run_dir) if world.is_main else None

    def report(message: str, lost: bool, said: dict | None = None) -> None:
        """The failure, in the events when this process is the one to write it (one reason
        per failure), and on stderr."""
        if world.writes_failure(lost, run_dir, started):
            write_failure(events or EventLog(run_dir), message, close=events is None, said=said)
        print(f"error: {message}", file=sys.stderr, flush=True)

    def lost(gone: list[int]) -> None:  # the watchdog: a peer died and a collective hangs
        report(lost_message(world, gone), lost=True)
        os._exit(1)

    world.watch_peers(lost)
    trainer = None
    try:
        cfg = RunConfig.load(args.config)
        if args.set:
            cfg = apply_overrides(cfg, args.set)
        trainer = Trainer(cfg, run_dir, events, world=world)
        trainer.setup()
        state = trainer.train(max_steps=args.max_steps, resume=args.resume)
        world.barrier()  # every process is done before any of them closes the group
        world.stop_watching()
        if world.is_main:
            print(f"{state}: {run_dir}")
        return 0
    except BaseException as exc:  # every failure leaves a reason in the run directory
        world.stop_watching()
        gone = peer_failure(exc, world)
        report(gone or friendly_error(exc), lost=gone is not None,
               said=None if gone else said_of(exc))
        if os.environ.get("AHA_DEBUG"):
            traceback.print_exc()
        return 1
    finally:
        if trainer is not None:
            trainer.close()
        if events is not None:
            events.close()
        world.close()


def write_failure(events, message: str, close: bool = False, said: dict | None = None) -> None:
    """The run's one-line failure (and the traceback of where this process was); `said`: its
    message id and values, when core has them (said_of)."""
    extra = {"said": said} if said else {}
    events.emit("error", message=message, traceback=traceback.format_exc(), **extra)
    events.emit("status", state="failed", message=message, **extra)
    if close:
        events.close()


def cmd_eval(args) -> int:
    import datasets

    from .evaluate import EVAL_FILE, evaluate_run

    datasets.disable_progress_bars()

    try:
        result = evaluate_run(args.run_dir, checkpoint=args.checkpoint, split=args.split,
                              samples=args.samples, max_questions=args.max_questions,
                              threads=args.threads)
    except BaseException as exc:
        print(f"error: {friendly_error(exc)}", file=sys.stderr)
        if os.environ.get("AHA_DEBUG"):
            traceback.print_exc()
        return 1
    print(format_eval(result))
    print(f"wrote {Path(args.run_dir) / EVAL_FILE}")
    return 0


def format_eval(result: dict) -> str:
    """The evaluation as a small table: one row per measure, base against trained."""
    lines = [f"{result['questions']} {result['split']} questions, adapter: {result['checkpoint']}",
             f"{'':28} {'base':>8} {'trained':>8}"]
    for mode in ("greedy", "sampled"):
        if mode not in result:
            continue
        base, trained = result[mode]["base"], result[mode]["trained"]
        label = "greedy" if mode == "greedy" else f"{result[mode]['samples']} samples"
        rows = [("accuracy", "accuracy")] if "accuracy" in base else []
        rows += [("total reward", "total")] + [(name, name) for name in base["rewards"]]
        for title, key in rows:
            b = base[key] if key in base else base["rewards"][key]
            t = trained[key] if key in trained else trained["rewards"][key]
            lines.append(f"{(label + ' ' + title)[:28]:28} {_num(b):>8} {_num(t):>8}")
    changed = sum(1 for item in result["items"] if item["changed"])
    lines.append(f"answers that changed: {changed} of {len(result['items'])}")
    return "\n".join(lines)


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def cmd_export(args) -> int:
    from transformers.utils import logging as hf_logging

    from .data import size_words
    from .export import STEPS, export_run

    hf_logging.disable_progress_bar()

    def progress(code: str, **values) -> None:
        print(STEPS[code].format(**values) + " ...", flush=True)

    try:
        result = export_run(args.run_dir, args.format, quant=args.quant,
                            checkpoint=args.checkpoint, out=args.out, progress=progress,
                            check=not args.no_check, threads=args.threads)
    except BaseException as exc:
        print(f"error: {friendly_error(exc)}", file=sys.stderr)
        if os.environ.get("AHA_DEBUG"):
            traceback.print_exc()
        return 1
    if "check" in result:
        print(f"llama.cpp answered {result['check']['question']!r}: "
              f"{result['check']['answer'][:200]!r}")
    print(f"wrote {result['folder']} ({result['checkpoint']} adapter):")
    for path in result["files"]:
        print(f"  {Path(path).name}  {size_words(Path(path).stat().st_size)}")
    return 0


def cmd_data_check(args) -> int:
    from .data import check_data

    needing = [r for r in (args.rewards or "").split(",") if r]
    report = check_data(args.file, question=args.question, answer=args.answer, system=args.system,
                        rewards_needing_answer=needing, split=args.split)
    print(report.format())
    if not report.ok:
        print(f"error: {report.errors[0]}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .export import FORMATS, QUANTS  # torch-free

    p = argparse.ArgumentParser(prog="python -m core", description="Aha Studio GRPO core.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="Train headless from a YAML config.")
    t.add_argument("config", help="Path to the run's YAML config.")
    t.add_argument("--run-dir", required=True, help="Folder for events, checkpoints, adapter.")
    t.add_argument("--max-steps", type=int, default=None, help="Override train.max_steps.")
    t.add_argument("--resume", action="store_true", help="Continue from the last checkpoint.")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="Override a setting, e.g. --set grpo.num_generations=8 (repeatable).")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="Score the base model and the trained adapter on questions "
                       "training never saw; writes RUN_DIR/eval.json.")
    e.add_argument("run_dir", help="The run's folder.")
    e.add_argument("--checkpoint", help="A checkpoint such as step-20 (default: the final adapter).")
    e.add_argument("--split", default="heldout", choices=("heldout", "train"),
                   help="heldout: the questions kept aside (default); train: training questions.")
    e.add_argument("--samples", type=int, default=0,
                   help="Also sample K answers per question at the training temperature.")
    e.add_argument("--max-questions", type=int, default=None,
                   help="Score at most this many questions (default: train.eval_max_questions).")
    e.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores).")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="Take a run's adapter home: as it is (peft), merged into "
                       "the base (16-bit safetensors) or as GGUF (llama.cpp, Ollama, LM Studio).")
    x.add_argument("run_dir", help="The run's folder.")
    x.add_argument("--format", default="gguf", choices=FORMATS,
                   help="adapter, merged or gguf (default).")
    x.add_argument("--quant", default=QUANTS[0], choices=QUANTS,
                   help="GGUF type: f16 (exact), q8_0, q4_k_m (smallest, the default).")
    x.add_argument("--checkpoint", help="A checkpoint such as step-20 (default: the final adapter).")
    x.add_argument("--out", help="Folder to write (default: RUN_DIR/export/<run>-<format>).")
    x.add_argument("--no-check", action="store_true",
                   help="Do not ask the GGUF file a test question in llama.cpp.")
    x.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores).")
    x.set_defaults(func=cmd_export)

    d = sub.add_parser("data", help="Data tools.")
    dsub = d.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="Validate a data file and print a report.")
    c.add_argument("file", help="CSV/TSV/JSON/JSONL/Parquet file, Hub dataset id, or builtin:arithmetic")
    c.add_argument("--question", help="Question column (default: detect).")
    c.add_argument("--answer", help="Answer column (default: detect).")
    c.add_argument("--system", help="System-prompt column (optional).")
    c.add_argument("--rewards", help="Comma-separated rewards that need an answer.")
    c.add_argument("--split", default="train")
    c.set_defaults(func=cmd_data_check)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)
