"""Exports a beginner takes home, each loaded by its own ecosystem's loader: the adapter with
peft, the merged model with transformers alone, and the GGUF file in llama.cpp. The GGUF round
trip starts from the embedded model (itself a GGUF), goes through llama.cpp's own converter and
quantizer, and must answer in llama.cpp as transformers + the adapter does."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.config import RunConfig
from core.export import ExportError, chat_family, converter, export_run, probe_gguf

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.model

if converter() is None and os.environ.get("AHA_REQUIRE_LLAMA_CPP"):
    raise RuntimeError("AHA_REQUIRE_LLAMA_CPP is set but llama.cpp's converter or quantizer is "
                       "missing (bash scripts/setup_export.sh)")
needs_llama_cpp = pytest.mark.skipif(converter() is None, reason="llama.cpp is not installed "
                                     "here (bash scripts/setup_export.sh installs it)")

QUESTIONS = ["What is 2 + 3?", "What is 7 + 8?", "Name a colour.", "What is 10 - 4?"]
SYSTEM = "Answer with a number."


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder of the embedded model whose adapter really changes the answers (LoRA B is
    zero when training starts, so it is moved off zero, as training would)."""
    from core.modelcard import write_model_card
    from core.models import load_model, public_base_id

    run_dir = tmp_path_factory.mktemp("runs") / "adder"
    run_dir.mkdir()
    cfg = RunConfig.from_dict({"name": "adder", "model": {"source": "default",
                                                          "precision": "32bit", "lora_r": 8,
                                                          "lora_alpha": 16},
                               "data": {"system_prompt": SYSTEM},
                               "grpo": {"temperature": 0.9}})
    cfg.save(run_dir / "config.yaml")
    loaded = load_model(cfg.model, seed=0, fast_cpu_generation=False)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    for peft_config in loaded.model.peft_config.values():  # as the trainer saves adapters
        peft_config.base_model_name_or_path = public_base_id(cfg.model.source)
    for folder in (run_dir / "adapter", run_dir / "checkpoints" / "step-3"):
        loaded.model.save_pretrained(folder)
        write_model_card(folder, run_dir, cfg)
    torch.save({"optimizer": 1}, run_dir / "checkpoints" / "step-3" / "optimizer.pt")
    return run_dir


@pytest.fixture(scope="module")
def reference(run):
    """transformers + peft on the run's adapter (float32): prompts and greedy answers, with the
    adapter on and off."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.evaluate import prompt_ids
    from core.models import embedded_model_dir, load_tokenizer, stop_token_ids

    tokenizer = load_tokenizer(str(embedded_model_dir()))
    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run / "adapter").eval()
    prompts = [prompt_ids(tokenizer, {"question": q, "system": SYSTEM}, 256) for q in QUESTIONS]
    stops = stop_token_ids(tokenizer, base)

    def greedy(ids):
        out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                             eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
        new = out[0, len(ids):].tolist()
        return new[:next((i for i, t in enumerate(new) if t in stops), len(new))]

    with torch.no_grad():
        trained = [greedy(ids) for ids in prompts]
        with model.disable_adapter():
            plain = [greedy(ids) for ids in prompts]
    return {"tokenizer": tokenizer, "prompts": prompts, "trained": trained, "base": plain,
            "model": model}


def test_the_adapter_export_loads_with_peft_and_leaves_the_optimizer_behind(run, reference):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.models import embedded_model_dir

    result = export_run(run, "adapter", checkpoint="step-3")
    folder = Path(result["folder"])
    assert folder == run / "export" / "adder-step-3-adapter" and result["checkpoint"] == "step-3"
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= names
    assert not any(n.endswith(".pt") for n in names)
    card = (folder / "README.md").read_text()
    assert "library_name: peft" in card and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, folder).eval()
    ids = torch.tensor([reference["prompts"][0]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, reference["model"](input_ids=ids).logits)


def test_the_merged_export_answers_like_the_adapter_with_transformers_alone(run, reference):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = Path(export_run(run, "merged")["folder"])
    assert folder.name == "adder-merged-16bit"
    config = json.loads((folder / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and not (folder / "adapter_config.json").exists()
    card = (folder / "README.md").read_text()
    assert "library_name: transformers" in card and "base_model_relation: finetune" in card
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}],
        add_generation_prompt=True, tokenize=False) == \
        reference["tokenizer"].decode(reference["prompts"][0])
    stops = GenerationConfig.from_pretrained(folder).eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stops
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([reference["prompts"][1]])
    with torch.no_grad():
        got = merged(input_ids=ids).logits[0, -1].log_softmax(-1)
        want = reference["model"](input_ids=ids).logits[0, -1].log_softmax(-1)
        with reference["model"].disable_adapter():
            plain = reference["model"](input_ids=ids).logits[0, -1].log_softmax(-1)
    # bfloat16 weights: close to the adapter's answer, and much closer than the base model's
    assert got.argmax() == want.argmax()
    assert (got - want).abs().max() < 0.25 < (plain - want).abs().max()


@needs_llama_cpp
def test_gguf_round_trip_answers_in_llama_cpp_like_transformers_with_the_adapter(run, reference):
    """The embedded GGUF in, a trained GGUF out through `python -m core export` (llama.cpp's
    converter), answering in llama.cpp token for token as transformers + the adapter does."""
    assert reference["trained"] != reference["base"]  # the adapter changes the answers
    out = run / "exported-f16"
    proc = subprocess.run([sys.executable, "-m", "core", "export", str(run), "--format", "gguf",
                           "--quant", "f16", "--out", str(out)], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Converting to GGUF with llama.cpp" in proc.stdout
    assert "llama.cpp answered 'What is 12 + 30?'" in proc.stdout
    gguf = out / "exported-f16.gguf"
    assert gguf.read_bytes()[:4] == b"GGUF"
    text = reference["tokenizer"].decode(reference["prompts"][0])
    seen = probe_gguf(gguf, reference["prompts"], 20, text=text)
    assert seen["completions"] == reference["trained"]
    # the chat template and the tokenizer travel inside the file
    assert seen["chat_template"] == reference["tokenizer"].chat_template
    assert seen["tokens_of_text"] == reference["prompts"][0]
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./exported-f16.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert f'SYSTEM """{SYSTEM}"""' in modelfile and "PARAMETER temperature 0.9" in modelfile


def _render_ollama(template: str, system: str, prompt: str) -> str:
    """The subset of Go templates the Modelfile uses: {{ if .X }}...{{ end }} and {{ .X }}."""
    values = {"System": system, "Prompt": prompt, "Response": ""}
    text = re.sub(r"\{\{ if \.(\w+) \}\}(.*?)\{\{ end \}\}",
                  lambda m: m.group(2) if values[m.group(1)] else "", template, flags=re.S)
    return re.sub(r"\{\{ \.(\w+) \}\}", lambda m: values[m.group(1)], text)


@needs_llama_cpp
def test_a_quantized_gguf_is_smaller_answers_and_its_modelfile_speaks_the_chat_format(run,
                                                                                        reference):
    result = export_run(run, "gguf", quant="q4_k_m")
    gguf = Path(result["files"][0])
    assert gguf.name == "adder-gguf-q4_k_m.gguf" and gguf.read_bytes()[:4] == b"GGUF"
    assert gguf.stat().st_size < 0.5 * 2 * 134_515_008  # under half the f16 file
    assert result["check"]["answer"]  # llama.cpp answered with it
    seen = probe_gguf(gguf, reference["prompts"][:2], 8)
    assert all(seen["completions"])
    modelfile = (gguf.parent / "Modelfile").read_text()
    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.S).group(1)
    rendered = _render_ollama(template, SYSTEM, QUESTIONS[2])
    want = reference["tokenizer"].apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[2]}],
        add_generation_prompt=True, tokenize=False)
    assert rendered.startswith(want)  # then the answer and its end-of-turn
    assert json.loads((gguf.parent / "export.json").read_text())["quant"] == "q4_k_m"


def test_export_mistakes_are_one_line_and_leave_nothing_behind(run, tmp_path):
    before = sorted(p.name for p in (run / "export").iterdir()) if (run / "export").exists() \
        else []
    for args, words in [(["--checkpoint", "step-99"], "No checkpoint 'step-99'"),
                        (["--checkpoint", "../../../etc"], "No checkpoint 'etc'"),
                        (["--format", "zip"], "invalid choice")]:
        proc = subprocess.run([sys.executable, "-m", "core", "export", str(run), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode != 0 and words in proc.stderr
        assert "Traceback" not in proc.stderr
    env = dict(os.environ, AHA_LLAMA_CPP=str(tmp_path))  # no llama.cpp there
    proc = subprocess.run([sys.executable, "-m", "core", "export", str(run)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: GGUF export needs llama.cpp's converter and quantizer; "
                                   "install them with: bash scripts/setup_export.sh")
    after = sorted(p.name for p in (run / "export").iterdir()) if (run / "export").exists() \
        else []
    assert after == before
    with pytest.raises(ExportError) as exc:
        export_run(run, "gguf", quant="q2")
    assert exc.value.code == "bad_quant"
    # a folder that holds anything but an earlier export is never replaced
    with pytest.raises(ExportError) as exc:
        export_run(run, "adapter", out=run)
    assert exc.value.code == "out_taken" and (run / "config.yaml").exists()
    again = export_run(run, "adapter", out=run / "export" / "adder-adapter")  # an export: replaced
    assert Path(again["folder"], "export.json").exists()


def test_the_modelfile_carries_no_line_from_a_run_name(run):
    from core.export import ollama_modelfile

    cfg = RunConfig.load(run / "config.yaml")
    cfg.name = 'evil\nFROM /etc/passwd\nSYSTEM "x"'
    lines = ollama_modelfile("m.gguf", cfg).splitlines()
    assert lines[0] == "# Ollama: ollama create evil-from-etc-passwd-system-x -f Modelfile"
    assert [ln for ln in lines if ln.startswith("FROM")] == ["FROM ./m.gguf"]


@pytest.mark.parametrize("template,family", [
    ("{{ '<|im_start|>' + role }}", "chatml"),
    ("<|start_header_id|>{{ role }}<|end_header_id|>", "llama3"),
    ("<start_of_turn>user", "gemma"),
    ("<|user|>{{ x }}<|end|><|assistant|>", "phi3"),
    ("[INST] {{ x }} [/INST]", None),
])
def test_the_chat_format_is_recognised_by_its_markers(template, family):
    assert chat_family(template) == family
