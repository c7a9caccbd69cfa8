"""Step 1, Model: which model to train, at what precision, and whether it fits this machine."""
from __future__ import annotations

import gradio as gr

from .access import AccessError
from .estimate import GB, estimate_memory, fit_verdict, part_label, shape_for_source
from .form import make_widget
from .i18n import L, decimal, t
from .jobs import JobError
from .machine import Machine

PRESETS = [  # (label, source): the embedded default first, then popular small instruct models
    (L("model.preset.choice.default"), "default"),
    (L("model.preset.choice.smollm2_360m"), "HuggingFaceTB/SmolLM2-360M-Instruct"),
    (L("model.preset.choice.qwen25_05b"), "Qwen/Qwen2.5-0.5B-Instruct"),
    (L("model.preset.choice.qwen3_06b"), "Qwen/Qwen3-0.6B"),
    (L("model.preset.choice.llama32_1b"), "meta-llama/Llama-3.2-1B-Instruct"),
    (L("model.preset.choice.qwen25_15b"), "Qwen/Qwen2.5-1.5B-Instruct"),
    (L("model.preset.choice.hub"), "__hub__"),
    (L("model.preset.choice.local"), "__local__"),
]

# The settings the estimate reads, in the order estimate_markdown takes them.
ESTIMATE_PATHS = ["model.source", "model.precision", "model.lora_r", "grpo.max_prompt_length",
                  "grpo.max_completion_length", "grpo.prompts_per_step", "grpo.num_generations",
                  "grpo.gradient_accumulation_steps", "model.gradient_checkpointing",
                  "train.optimizer", "model.dynamic_keep_share", "train.processes"]


def source_for_preset(preset: str, current: str) -> tuple[str, bool]:
    """The source a preset puts in the box, and whether the box is for typing."""
    if preset in ("__hub__", "__local__"):
        known = {s for _, s in PRESETS}
        return ("" if current in known else current), True
    return preset, False


def estimate_parts(machine: Machine, source, precision, lora_r, prompt_len, completion_len,
                   prompts_per_step, num_generations, accumulation, checkpointing,
                   optimizer, keep_share=0.1, processes=1) -> dict | None:
    """The estimate's parts in bytes (with 'total'), or None when it cannot be made. With
    several processes (GPUs), the memory of one of them: each holds the whole base and adapter
    and its share of the prompts."""
    shape = shape_for_source(str(source or ""))
    if shape is None:
        return None
    try:
        return estimate_memory(
            shape, precision=precision or "4bit", lora_r=int(lora_r or 16),
            keep_share=float(0.1 if keep_share is None else keep_share),
            prompt_tokens=int(prompt_len or 256), completion_tokens=int(completion_len or 64),
            prompts_per_step=-(-int(prompts_per_step or 1) // max(1, int(processes or 1))),
            num_generations=int(num_generations or 2),
            gradient_accumulation_steps=int(accumulation or 1),
            gradient_checkpointing=bool(checkpointing), optimizer=optimizer or "adamw",
            gpu=machine.gpu, available_bytes=machine.available_bytes)
    except (TypeError, ValueError, OverflowError):
        return None


def estimate(machine: Machine, source, precision, lora_r, prompt_len, completion_len,
             prompts_per_step, num_generations, accumulation, checkpointing, optimizer,
             keep_share=0.1, processes=1):
    """(verdict, markdown) for the chosen settings; verdict is 'ok', 'tight', 'too_big' or
    'unknown'. Several processes: the memory per GPU."""
    shape = shape_for_source(str(source or ""))
    if shape is None:
        return "unknown", t("model.estimate.unknown_model")
    parts = estimate_parts(machine, source, precision, lora_r, prompt_len, completion_len,
                           prompts_per_step, num_generations, accumulation, checkpointing,
                           optimizer, keep_share, processes)
    if parts is None:
        return "unknown", t("model.estimate.fill_in")
    verdict, line = fit_verdict(parts["total"], machine.available_bytes)
    icon = {"ok": "✅", "tight": "⚠️", "too_big": "⛔"}[verdict]
    detail = ", ".join(f"{part_label(k)} {decimal(v / GB, 2)} GB"
                       for k, v in parts.items() if k != "total")
    total = t("model.estimate.total", gb=decimal(parts['total'] / GB))
    if int(processes or 1) > 1:
        total = t("model.estimate.total_per_gpu", gb=decimal(parts['total'] / GB),
                  gpus=int(processes))
    params = t("model.estimate.params", millions=f"{shape.params / 1e6:.0f}")
    return verdict, f"{icon} **{total}** {line}\n\n<small>{params} · {detail}</small>"


def build(form: dict, machine: Machine) -> dict:
    gr.Markdown(L("model.intro"))
    # what the machine has, in the page's language once the page has loaded (see wire)
    machine_info = gr.Markdown(L("model.machine.gpu_loading" if machine.gpu
                                 else "model.machine.cpu_loading"), elem_id="machine-info")
    with gr.Row():
        preset = gr.Dropdown(PRESETS, value="default", label=L("model.preset.label"),
                             elem_id="model-preset", scale=2)
        form["model.source"] = make_widget("model.source", "default", interactive=False, scale=3,
                                           label=L("model.source.label"))
    with gr.Row():
        form["model.precision"] = make_widget("model.precision", "4bit")
        form["model.lora_r"] = make_widget("model.lora_r", 16)
        form["model.lora_alpha"] = make_widget("model.lora_alpha", 32)
    with gr.Accordion(L("model.more_settings"), open=False):
        for path in ("model.dynamic_keep_share", "model.lora_dropout", "model.target_modules",
                     "model.gradient_checkpointing", "model.chat_template"):
            default = {"model.dynamic_keep_share": 0.1, "model.lora_dropout": 0.0,
                       "model.target_modules": "auto", "model.gradient_checkpointing": True,
                       "model.chat_template": ""}[path]
            form[path] = make_widget(path, default)
    estimate_md = gr.Markdown(elem_id="model-estimate")
    with gr.Row():
        check = gr.Button(L("model.check.button"), elem_id="model-check")
    check_out = gr.Markdown(elem_id="model-check-out")
    return {"preset": preset, "estimate": estimate_md, "check": check, "check_out": check_out,
            "machine_info": machine_info}


def wire(ui: dict, form: dict, studio, extra_outputs: list, demo_block) -> None:
    source = form["model.source"]
    machine = studio.machine

    def describe_machine(user):
        return t("model.machine.heading", description=machine.describe())

    demo_block.load(studio.handler(describe_machine), None, ui["machine_info"],
                    show_progress="hidden")

    def on_preset(user, preset, current):
        value, typing = source_for_preset(preset, current)
        placeholder = (t("model.source.placeholder.hub") if preset == "__hub__"
                       else t("model.source.placeholder.local") if preset == "__local__" else None)
        return gr.update(value=value, interactive=typing, placeholder=placeholder)

    ui["preset"].change(studio.handler(on_preset), [ui["preset"], source], source,
                        show_progress="hidden")

    def check(user, src, precision):
        yield t("model.check.starting")
        try:
            src = user.model_source(src)
            for kind, value in studio.jobs.run({"job": "prepare", "source": src,
                                                "precision": precision}):
                if kind == "progress":
                    yield f"⏳ {value}…"
                else:
                    millions = f"{value['params'] / 1e6:.0f}"
                    if studio.policy.shared:
                        yield t("model.check.ready", millions=millions, kind=value["model_type"])
                    else:
                        yield t("model.check.ready_from", millions=millions,
                                kind=value["model_type"], path=value["path"])
        except (JobError, AccessError) as exc:
            yield f"❌ {exc}"

    ui["check"].click(studio.handler(check), [source, form["model.precision"]], ui["check_out"],
                      concurrency_limit=2)

    inputs = [form[p] for p in ESTIMATE_PATHS]

    def on_change(user, *values):
        verdict, text = estimate(machine, *values)
        return [text] + [text] * len(extra_outputs)

    on_change = studio.handler(on_change)  # in the page's language
    demo_block.load(on_change, inputs, [ui["estimate"]] + extra_outputs, show_progress="hidden")
    for comp in inputs:
        comp.change(on_change, inputs, [ui["estimate"]] + extra_outputs, show_progress="hidden",
                    queue=False)
