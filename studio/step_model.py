"""Step 1, Model: which model to train, at what precision, and whether it fits this machine."""
from __future__ import annotations

import gradio as gr

from .access import AccessError
from .estimate import GB, estimate_memory, fit_verdict, shape_for_source
from .form import make_widget
from .jobs import JobError
from .machine import Machine

PRESETS = [  # (label, source): the embedded default first, then popular small instruct models
    ("SmolLM2-135M-Instruct (built in, works offline)", "default"),
    ("SmolLM2-360M-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct"),
    ("Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
    ("Qwen3-0.6B", "Qwen/Qwen3-0.6B"),
    ("Llama-3.2-1B-Instruct (gated: needs a Hub token)", "meta-llama/Llama-3.2-1B-Instruct"),
    ("Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"),
    ("Another Hugging Face model id…", "__hub__"),
    ("A model folder on this machine…", "__local__"),
]

# The settings the estimate reads, in the order estimate_markdown takes them.
ESTIMATE_PATHS = ["model.source", "model.precision", "model.lora_r", "grpo.max_prompt_length",
                  "grpo.max_completion_length", "grpo.prompts_per_step", "grpo.num_generations",
                  "grpo.gradient_accumulation_steps", "model.gradient_checkpointing",
                  "train.optimizer"]


def source_for_preset(preset: str, current: str) -> tuple[str, bool]:
    """The source a preset puts in the box, and whether the box is for typing."""
    if preset in ("__hub__", "__local__"):
        known = {s for _, s in PRESETS}
        return ("" if current in known else current), True
    return preset, False


def estimate_parts(machine: Machine, source, precision, lora_r, prompt_len, completion_len,
                   prompts_per_step, num_generations, accumulation, checkpointing,
                   optimizer) -> dict | None:
    """The estimate's parts in bytes (with 'total'), or None when it cannot be made."""
    shape = shape_for_source(str(source or ""))
    if shape is None:
        return None
    try:
        return estimate_memory(
            shape, precision=precision or "4bit", lora_r=int(lora_r or 16),
            prompt_tokens=int(prompt_len or 256), completion_tokens=int(completion_len or 64),
            prompts_per_step=int(prompts_per_step or 1), num_generations=int(num_generations or 2),
            gradient_accumulation_steps=int(accumulation or 1),
            gradient_checkpointing=bool(checkpointing), optimizer=optimizer or "adamw",
            gpu=machine.gpu)
    except (TypeError, ValueError, OverflowError):
        return None


def estimate(machine: Machine, source, precision, lora_r, prompt_len, completion_len,
             prompts_per_step, num_generations, accumulation, checkpointing, optimizer):
    """(verdict, markdown) for the chosen settings; verdict is 'ok', 'tight', 'too_big' or
    'unknown'."""
    shape = shape_for_source(str(source or ""))
    if shape is None:
        return "unknown", ("Memory estimate: unknown until the model's config is available "
                           "(press *Check the model*).")
    parts = estimate_parts(machine, source, precision, lora_r, prompt_len, completion_len,
                           prompts_per_step, num_generations, accumulation, checkpointing,
                           optimizer)
    if parts is None:
        return "unknown", "Memory estimate: fill in every number first."
    verdict, line = fit_verdict(parts["total"], machine.available_bytes)
    icon = {"ok": "✅", "tight": "⚠️", "too_big": "⛔"}[verdict]
    detail = ", ".join(f"{k} {v / GB:.2f} GB" for k, v in parts.items() if k != "total")
    return verdict, (f"{icon} **Memory estimate: {parts['total'] / GB:.1f} GB.** {line}\n\n"
                     f"<small>{shape.params / 1e6:.0f}M parameters · {detail}</small>")


def build(form: dict, machine: Machine) -> dict:
    gr.Markdown("### 1 · Choose a model\nThe built-in model is small and works without internet; "
                "bigger models learn more but need a GPU.")
    gr.Markdown(f"**This machine:** {machine.describe()}", elem_id="machine-info")
    with gr.Row():
        preset = gr.Dropdown(PRESETS, value="default", label="Model", elem_id="model-preset",
                             scale=2)
        form["model.source"] = make_widget("model.source", "default", interactive=False, scale=3,
                                           label="Model source (Hub id or folder)")
    with gr.Row():
        form["model.precision"] = make_widget("model.precision", "4bit")
        form["model.lora_r"] = make_widget("model.lora_r", 16)
        form["model.lora_alpha"] = make_widget("model.lora_alpha", 32)
    with gr.Accordion("More model settings", open=False):
        for path in ("model.lora_dropout", "model.target_modules", "model.gradient_checkpointing",
                     "model.chat_template"):
            default = {"model.lora_dropout": 0.0, "model.target_modules": "auto",
                       "model.gradient_checkpointing": True, "model.chat_template": ""}[path]
            form[path] = make_widget(path, default)
    estimate_md = gr.Markdown(elem_id="model-estimate")
    with gr.Row():
        check = gr.Button("Check the model (downloads or converts it once)", elem_id="model-check")
    check_out = gr.Markdown(elem_id="model-check-out")
    return {"preset": preset, "estimate": estimate_md, "check": check, "check_out": check_out}


def wire(ui: dict, form: dict, studio, extra_outputs: list, demo_block) -> None:
    source = form["model.source"]
    machine = studio.machine

    def on_preset(preset, current):
        value, typing = source_for_preset(preset, current)
        placeholder = ("e.g. Qwen/Qwen2.5-0.5B-Instruct" if preset == "__hub__"
                       else "/path/to/model-folder" if preset == "__local__" else None)
        return gr.update(value=value, interactive=typing, placeholder=placeholder)

    ui["preset"].change(on_preset, [ui["preset"], source], source, show_progress="hidden")

    def check(user, src, precision):
        yield "⏳ Starting…"
        try:
            src = user.model_source(src)
            for kind, value in studio.jobs.run({"job": "prepare", "source": src,
                                                "precision": precision}):
                if kind == "progress":
                    yield f"⏳ {value}…"
                else:
                    where = f" from `{value['path']}`" if not studio.policy.shared else ""
                    yield (f"✅ Ready: {value['params'] / 1e6:.0f}M parameters, "
                           f"{value['model_type']} architecture{where}.")
        except (JobError, AccessError) as exc:
            yield f"❌ {exc}"

    ui["check"].click(studio.handler(check), [source, form["model.precision"]], ui["check_out"],
                      concurrency_limit=2)

    inputs = [form[p] for p in ESTIMATE_PATHS]

    def on_change(*values):
        verdict, text = estimate(machine, *values)
        return [text] + [text] * len(extra_outputs)

    demo_block.load(on_change, inputs, [ui["estimate"]] + extra_outputs, show_progress="hidden")
    for comp in inputs:
        comp.change(on_change, inputs, [ui["estimate"]] + extra_outputs, show_progress="hidden",
                    queue=False)
