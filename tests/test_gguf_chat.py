"""The chat's llama.cpp engine (core.gguf_chat) through the studio's real model process: the
built-in model at 4 bits with an adapter that changes its answers, against transformers + peft on
the same numbers (the NF4 weights the run trains on, dequantized, in float32)."""
import json
import os
import time
from pathlib import Path

import pytest
import torch

from core.gguf_chat import cache_folder, ready, unsupported

pytestmark = pytest.mark.model

if not ready() and os.environ.get("AHA_REQUIRE_LLAMA_CPP"):
    raise RuntimeError("AHA_REQUIRE_LLAMA_CPP is set but llama.cpp or its converters are missing "
                       "(bash scripts/setup_export.sh)")
if not ready():
    pytest.skip("llama.cpp is not installed here (bash scripts/setup_export.sh installs it)",
                allow_module_level=True)

QUESTIONS = ["What is 2 + 3?", "What is 7 + 8?", "Name a colour.", "What is 10 - 4?"]
SYSTEM = "Answer with a number."
TOKENS = 20


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """An adapter of the built-in model at 4 bits whose weights really change the answers (LoRA
    B starts at zero; it is moved off zero, as training would)."""
    from core.config import ModelConfig
    from core.models import load_model, save_adapter_files

    folder = tmp_path_factory.mktemp("chat") / "step-3"
    loaded = load_model(ModelConfig(source="default", precision="4bit", lora_r=8, lora_alpha=16),
                        seed=0, fast_cpu_generation=False)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    save_adapter_files(loaded.model, folder)
    return folder


@pytest.fixture(scope="module")
def reference(adapter):
    """Greedy answers of transformers + peft in float32 on the dequantized NF4 base: with the
    adapter and without."""
    from peft import PeftModel

    from core.config import ModelConfig
    from core.models import load_model, stop_token_ids
    from studio.infer import _prompt_ids

    loaded = load_model(ModelConfig(source="default", precision="4bit"), lora=False,
                        fast_cpu_generation=False, device=torch.device("cpu"))
    base = loaded.model.dequantize().float()
    tokenizer = loaded.tokenizer
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    stops = stop_token_ids(tokenizer, base)
    prompts = [_prompt_ids(tokenizer, q, SYSTEM) for q in QUESTIONS]

    def greedy(ids):
        out = model.generate(torch.tensor([ids]), max_new_tokens=TOKENS, do_sample=False,
                             eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
        new = out[0, len(ids):].tolist()
        return tokenizer.decode(new[:next((i for i, t in enumerate(new) if t in stops),
                                          len(new))], skip_special_tokens=True)

    with torch.no_grad():
        trained = [greedy(ids) for ids in prompts]
        with model.disable_adapter():
            plain = [greedy(ids) for ids in prompts]
    return {"adapter": trained, "base": plain}


def _request(adapter: Path, **more) -> dict:
    return {"job": "generate", "source": "default", "precision": "4bit", "questions": QUESTIONS,
            "system": SYSTEM, "num": 1, "max_new_tokens": TOKENS, "temperature": 0,
            "threads": 2, "adapter": str(adapter), "compare_base": True, **more}


@pytest.fixture
def pool(monkeypatch):
    from studio.jobs import JobPool

    monkeypatch.delenv("AHA_CHAT_ENGINE", raising=False)  # the default: llama.cpp on a CPU
    pool = JobPool(size=1, idle=0.2)
    yield pool
    time.sleep(0.3)
    pool.reap()


def test_the_chat_answers_in_llama_cpp_as_transformers_does_on_the_trained_numbers(
        adapter, reference, pool):
    """Greedy, token for token: the adapter's answers and the base model's, each from the
    model the run trains (its NF4 numbers, not the float model they were made from)."""
    assert reference["adapter"] != reference["base"]  # the adapter changes the answers
    steps = list(pool.run(_request(adapter)))
    assert steps[-1][0] == "result", steps[-3:]
    result = steps[-1][1]
    assert result["engine"] == "llama.cpp"
    assert [a[0] for a in result["adapter"]] == reference["adapter"]
    assert [b[0] for b in result["base"]] == reference["base"]


def test_the_llama_cpp_chat_keeps_its_models_and_converts_a_new_checkpoint(adapter, pool):
    """The page loads the model when a checkpoint is chosen; then a question loads and converts
    nothing, the same seed gives the same answers, streamed answers grow into the final ones,
    and a checkpoint written again is converted again."""
    req = _request(adapter, questions=[QUESTIONS[1]], temperature=1.0, seed=5)
    preload = list(pool.preload({**req, "questions": []}))
    assert preload[-1] == ("result", {"loaded": True, "engine": "llama.cpp"})
    said = [v for k, v in preload if k == "progress"]
    assert "Converting the adapter for llama.cpp" in said and "Loading the model" in said

    t0 = time.perf_counter()
    first = list(pool.run({**req, "stream": True}))
    elapsed = time.perf_counter() - t0
    said = [v for k, v in first if k == "progress"]
    assert said == ["Writing the answers"], said  # nothing loaded or converted
    final = first[-1][1]
    partial = [v for k, v in first if k == "partial"]
    assert partial and all(final[side][0][0].startswith(p[side][0][0])
                           for p in partial for side in ("adapter", "base"))
    again = list(pool.run(req))
    assert again[-1][1] == final  # seeded: the same answers
    other = list(pool.run({**req, "seed": 6, "num": 3}))[-1][1]
    assert len(set(other["base"][0])) > 1  # each answer of a question draws its own
    print(f"an answer pair of up to {TOKENS} tokens each: {elapsed:.2f} s")

    weights = adapter / "adapter_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    said = [v for k, v in pool.run(req) if k == "progress"]
    assert "Converting the adapter for llama.cpp" in said and "Loading the model" not in said


def test_an_adapter_llama_cpp_would_misread_is_answered_by_transformers(adapter, pool, tmp_path):
    """llama.cpp scales every adapter by alpha / rank: an rsLoRA adapter would come out wrong,
    so transformers answers it, and says why."""
    import shutil

    rs = tmp_path / "rslora"
    shutil.copytree(adapter, rs)
    config = json.loads((rs / "adapter_config.json").read_text())
    (rs / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    assert unsupported(adapter) is None and "rsLoRA" in unsupported(rs)
    steps = list(pool.run(_request(rs, questions=[QUESTIONS[0]], max_new_tokens=4,
                                   temperature=0.7)))
    said = [v for k, v in steps if k == "progress"]
    assert any(s.startswith("llama.cpp could not answer (llama.cpp does not apply rsLoRA")
               for s in said), said
    assert steps[-1][0] == "result" and "engine" not in steps[-1][1]  # transformers answered
    assert set(steps[-1][1]) == {"adapter", "base"}


def test_the_chat_engine_follows_the_setting_and_what_is_installed(monkeypatch, tmp_path):
    from transformers import LlamaConfig

    from core.config import ModelConfig
    from core.engine_choice import chat_engine
    from core.gguf_chat import too_large

    monkeypatch.delenv("AHA_CHAT_ENGINE", raising=False)
    monkeypatch.delenv("AHA_VLLM_CHAT_ON_CPU", raising=False)
    assert chat_engine(False) == "llama.cpp"
    monkeypatch.setenv("AHA_CHAT_ENGINE", "transformers")
    assert chat_engine(False) == "transformers"
    # each model at each precision has its own llama.cpp copy
    folders = {cache_folder(ModelConfig(source="default", precision=p)) for p in ("4bit", "16bit")}
    assert len(folders) == 2
    # a model past 0.5B parameters keeps transformers (counted from its config alone)
    assert not too_large(ModelConfig(source="default"))
    LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                vocab_size=32000).save_pretrained(tmp_path / "large")
    assert too_large(ModelConfig(source=str(tmp_path / "large")))
    assert too_large(ModelConfig(source=str(tmp_path / "no-such-model")))


def test_answers_written_on_two_threads_are_the_ones_written_in_turn(adapter):
    """With a core for each model the adapter's and the base model's answers are written on two
    threads at once; with one thread a token each in turn. Same seed, same answers either way,
    and asked again (nothing reused from the answer before) still the same."""
    from core.config import ModelConfig
    from core.gguf_chat import GgufChat, _side_by_side, base_gguf
    import core.gguf_chat as gguf_chat
    from studio.infer import _prompt_ids

    chat = GgufChat(base_gguf(ModelConfig(source="default", precision="4bit")), threads=2)
    chat.share_cpu = False  # the threads asked for, whatever else the machine is doing
    used = []

    def spy(step, live):
        used.append(len(live))
        return _side_by_side(step, live)

    try:
        gguf_chat._side_by_side = spy
        models = [chat.model(str(adapter)), chat.model(None)]
        prompts = [_prompt_ids(chat.tokenizer(), q, SYSTEM) for q in QUESTIONS[:2]]
        together = chat.answer(models, prompts, 2, TOKENS, 1.0, seed=3)
        assert used == [2] * 4  # 2 questions x 2 answers, each pair on two threads
        chat.threads = 1
        in_turn = chat.answer(models, prompts, 2, TOKENS, 1.0, seed=3)
        assert used == [2] * 4  # one thread: no more pairs on threads
        assert in_turn == together
        assert in_turn[:4] != in_turn[4:]  # the adapter's answers are not the base model's
        assert len({tuple(r) for r in in_turn[4:]}) > 1  # each answer draws its own
    finally:
        gguf_chat._side_by_side = _side_by_side
        chat.close()


def test_a_changed_model_leaves_no_stale_llama_cpp_copy_behind(tiny_model_dir, tmp_path,
                                                               monkeypatch):
    """Each llama.cpp copy is hundreds of MB for the built-in model: when a model's weights (or
    the llama.cpp release, or the copy's format) change, its new copy replaces the old one. Another
    model whose folder has the same name keeps its own copy."""
    import shutil

    from core.config import ModelConfig
    from core.gguf_chat import base_gguf

    monkeypatch.setenv("AHA_STUDIO_HOME", str(tmp_path / "home"))
    mine, other = tmp_path / "mine" / "tiny", tmp_path / "other" / "tiny"
    shutil.copytree(tiny_model_dir, mine)
    shutil.copytree(tiny_model_dir, other)
    first = base_gguf(ModelConfig(source=str(mine), precision="32bit"))
    theirs = base_gguf(ModelConfig(source=str(other), precision="32bit"))
    assert first != theirs and (first / "base.gguf").exists()
    # the same model kept at another share of 16-bit layers is another copy, kept too
    kept = base_gguf(ModelConfig(source=str(mine), precision="32bit", dynamic_keep_share=0.2))
    time.sleep(0.01)
    (mine / "config.json").write_text((mine / "config.json").read_text())  # new weights' time
    second = base_gguf(ModelConfig(source=str(mine), precision="32bit"))
    assert second != first and (second / "base.gguf").exists()
    assert not first.exists()
    assert (theirs / "base.gguf").exists()
    assert sorted(p.name for p in (tmp_path / "home" / "gguf").iterdir()
                  if not p.name.startswith(".")) == sorted([second.name, theirs.name, kept.name])
