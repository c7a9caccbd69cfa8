"""The transformers engine's sampler: the same distribution as torch.multinomial, and the
sampling knobs (temperature, top-k, top-p) with their usual meaning, on a real tiny model."""
from contextlib import nullcontext

import pytest
import torch

from core.config import ModelConfig
from core.generation import SeededSampling, make_engine, sample_gumbel_max
from core.models import load_model


def test_gumbel_max_draws_follow_the_probabilities():
    torch.manual_seed(0)
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.1, 0.0]]).expand(40_000, 5)
    counts = torch.bincount(sample_gumbel_max(probs.log()), minlength=5).float() / 40_000
    torch.testing.assert_close(counts, probs[0], atol=0.01, rtol=0)
    assert counts[4] == 0


def test_gumbel_max_never_returns_a_masked_token():
    torch.manual_seed(0)
    # masked tokens first, in the middle and at the end; a row of one token; a tiny probability
    scores = torch.tensor([[0.0, 0.0, 0.3, 0.0, 0.7, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0],
                           [1e-30, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]).log().repeat(5_000, 1)
    allowed = scores > float("-inf")
    picked = sample_gumbel_max(scores)
    assert allowed[torch.arange(len(picked)), picked].all()
    # the extremes of the uniform draw: u = 0 (noise -inf) must not leave a row without a token
    for edge in (0.0, 1.0 - 2 ** -24):
        picked = sample_gumbel_max(scores[:3], torch.full((3, 7), edge))
        assert allowed[torch.arange(3), picked].all(), (edge, picked)


def test_a_draw_survives_the_rounding_of_another_batch_shape():
    """What one process and two must agree on: logits that differ in their last bits (another
    batch shape, other padding) give the same tokens for the same random numbers. Drawn from
    the cumulative sum instead, 7 of these 1500 draws move to a neighbouring token (each of
    the 32k boundaries moves with the rounding); drawn as the Gumbel-max trick, a draw moves
    only when its two best perturbed scores are that close."""
    torch.manual_seed(0)
    scores = torch.randn(1500, 32_768) * 1.3  # flat, like a barely trained model
    nudged = scores + (torch.rand_like(scores) - 0.5) * 1e-4  # rounding-sized: +-5e-5
    uniforms = torch.rand(scores.shape)
    a = sample_gumbel_max(scores, uniforms.clone())
    b = sample_gumbel_max(nudged, uniforms.clone())
    assert (a != b).sum() == 0
    # the draws themselves are random: the same noise gives the same token, new noise another
    assert (sample_gumbel_max(scores) != a).float().mean() > 0.99


def test_processor_applies_temperature_top_k_and_top_p():
    torch.manual_seed(0)
    scores = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]])).expand(20_000, 4).clone()
    ids = torch.zeros(20_000, 1, dtype=torch.long)

    def frequencies(**knobs):
        out = SeededSampling(**{"temperature": 1.0, "top_p": 1.0, "top_k": 0, **knobs})(
            ids, scores)
        assert ((out == 0).sum(-1) == 1).all() and torch.isinf(out).sum(-1).eq(3).all()
        return torch.bincount(out.argmax(-1), minlength=4).float() / len(out)

    torch.testing.assert_close(frequencies(), torch.tensor([0.4, 0.3, 0.2, 0.1]), atol=0.015,
                               rtol=0)
    assert frequencies(top_k=2)[2:].sum() == 0
    assert frequencies(top_p=0.65)[2:].sum() == 0  # 0.4 + 0.3 reach 0.65
    cold = frequencies(temperature=0.25)  # p^4, renormalised: 0.72, 0.23, 0.045, 0.003
    assert cold[0] > 0.68 and cold[3] < 0.01


def test_engine_samples_reproducibly_and_by_the_knobs(tiny_model_dir):
    loaded = load_model(ModelConfig(source=str(tiny_model_dir), precision="32bit", lora_r=4,
                                    gradient_checkpointing=False), seed=0)
    engine = make_engine("auto", loaded.model, loaded.tokenizer, loaded.device)

    def run(seed, **knobs):
        torch.manual_seed(seed)
        return engine.generate([[1, 20, 300], [1, 7]], num_generations=3, max_new_tokens=6,
                               **knobs).completion_ids
    assert run(0) == run(0)
    assert run(0) != run(1)
    greedy = run(0, top_k=1)
    assert greedy == run(5, top_k=1)  # top-1 is greedy whatever the seed
    assert greedy[0] == greedy[1] == greedy[2] and greedy[3] == greedy[4] == greedy[5]


def test_adapters_and_the_base_model_answer_in_one_batch(tiny_model_dir, tmp_path):
    """adapter_names: each row written by its own adapter or the base model, in one batch,
    the same greedy tokens as one after the other (the studio's side-by-side chat)."""
    from peft import PeftModel

    from core.generation import TransformersEngine

    trained = load_model(ModelConfig(source=str(tiny_model_dir), precision="32bit", lora_r=4),
                         seed=0)
    with torch.no_grad():
        for name, p in trained.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 2.0)
    trained.model.save_pretrained(tmp_path / "adapter")
    base = load_model(ModelConfig(source=str(tiny_model_dir), precision="32bit"), lora=False)
    model = PeftModel.from_pretrained(base.model, str(tmp_path / "adapter"), adapter_name="a")
    # batches of 3: the rows of one request go in two batches, their adapters with them
    engine = TransformersEngine(model.eval(), base.tokenizer, base.device, max_batch_size=3)
    prompts = [[1, 20, 300], [1, 7]]

    def greedy(rows, **kw):
        return engine.generate(rows, 1, 8, 1.0, 1.0, 1, min_new_tokens=8, **kw).completion_ids
    adapter = greedy(prompts)
    with model.disable_adapter():
        plain = greedy(prompts)
    assert adapter != plain  # the adapter changes the answers
    mixed = greedy(prompts + prompts, adapter_names=["a", "a", "__base__", "__base__"])
    assert mixed == adapter + plain


@pytest.mark.parametrize("precision", ["4bit", "16bit", "32bit"])
def test_lean_lora_layers_compute_what_peft_does(tiny_model_dir, tmp_path, precision,
                                                 monkeypatch):
    """Sampling runs the LoRA layers through LeanLoraForGeneration: the same logits as peft's
    own forward for the adapter, a batch mixing it with the base model, adapters disabled, and
    a batch with a second adapter (which falls back to peft, and only that one)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    from core.models import LeanLoraForGeneration

    for name, seed in (("a", 7), ("b", 8)):
        trained = load_model(ModelConfig(source=str(tiny_model_dir), precision=precision,
                                         lora_r=4), seed=0)
        with torch.no_grad():
            for key, p in trained.model.named_parameters():
                if "lora_B" in key:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
        trained.model.save_pretrained(tmp_path / name)
    base = load_model(ModelConfig(source=str(tiny_model_dir), precision=precision), lora=False)
    model = PeftModel.from_pretrained(base.model, str(tmp_path / "a"), adapter_name="a").eval()
    model.load_adapter(str(tmp_path / "b"), adapter_name="b")
    lean = LeanLoraForGeneration(model)
    assert len(lean) == sum(isinstance(m, LoraLayer) for m in model.modules()) > 0
    ids = torch.tensor([[1, 20, 300, 5], [1, 7, 9, 11]])
    layer_type = type(next(m for m in model.modules() if isinstance(m, LoraLayer)))
    peft_calls = []
    peft_forward = layer_type.forward
    monkeypatch.setattr(layer_type, "forward",
                        lambda self, *a, **k: peft_calls.append(1) or peft_forward(self, *a, **k))

    def logits(use_lean: bool, **kw) -> torch.Tensor:
        with torch.no_grad(), (lean.active() if use_lean else nullcontext()):
            return model(input_ids=ids, **kw).logits

    with model.disable_adapter():
        plain = logits(False)
        assert torch.equal(logits(True), plain)
    for kw in ({}, {"adapter_names": ["a", "__base__"]}, {"adapter_names": ["b", "a"]}):
        ref = logits(False, **kw)
        peft_calls.clear()
        got = logits(True, **kw)
        assert bool(peft_calls) == ("b" in kw.get("adapter_names", [])), kw  # lean unless "b"
        assert (got - ref).abs().max() <= 1e-4 * ref.abs().max(), kw
        assert (got[0] - plain[0]).abs().max() > 0.01 * plain.abs().max()  # the adapter counts
    mixed = logits(True, adapter_names=["a", "__base__"])
    assert (mixed[1] - plain[1]).abs().max() <= 1e-5 * plain.abs().max()  # the base row
    # an adapter whose weights went NaN (a run that diverged) leaves the base row as it was
    with torch.no_grad():
        for key, p in model.named_parameters():
            if ".a." in key and "lora_" in key:
                p.fill_(float("nan"))
    broken = logits(True, adapter_names=["a", "__base__"])
    assert broken[0].isnan().any() and torch.equal(broken[1], mixed[1])
    assert not vars(next(m for m in model.modules() if isinstance(m, LoraLayer))).get("forward")


def test_auto_engine_keeps_transformers_on_a_cpu(monkeypatch):
    """vLLM takes about 3x the memory and half a minute to start on this CPU
    (bench/results/vllm_engine_cpu.json): auto takes it on a GPU for steps of 4,096 tokens or
    more, on a CPU only when told to."""
    from core import engine_choice as vllm_engine
    from core.config import RunConfig

    monkeypatch.setattr(vllm_engine, "vllm_python", lambda: "/usr/bin/python3")  # installed
    monkeypatch.delenv("AHA_VLLM_AUTO_ON_CPU", raising=False)
    big = RunConfig.from_dict({"grpo": {"prompts_per_step": 4, "num_generations": 8,
                                        "max_completion_length": 128}})
    small = RunConfig.from_dict({"grpo": {"prompts_per_step": 4, "num_generations": 8,
                                          "max_completion_length": 64}})
    assert vllm_engine.choose_engine(big, gpu=True)[0] == "vllm"
    assert vllm_engine.choose_engine(small, gpu=True)[0] == "transformers"
    engine, why = vllm_engine.choose_engine(big, gpu=False)
    assert engine == "transformers" and "CPU" in why
    monkeypatch.setenv("AHA_VLLM_AUTO_ON_CPU", "1")
    assert vllm_engine.choose_engine(big, gpu=False)[0] == "vllm"
    big.generation.engine = "transformers"
    assert vllm_engine.choose_engine(big, gpu=True) == ("transformers", "chosen in the settings")


def test_merged_weights_for_vllm_are_peft_merge_in_the_checkpoints_names(tiny_model_dir):
    """generation.vllm_weight_sync merged: the weights written for vLLM are, name for name, the
    base checkpoint's tensors, and their values are peft's own merge (merge_and_unload) of the
    trained adapter; adapters a plain sum cannot give are sent as adapters (auto) or refused
    (merged) in one line."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.generation import vllm_weight_sync
    from core.vllm_engine import VLLMError, checkpoint_names, merged_weights, unmergeable

    loaded = load_model(ModelConfig(source=str(tiny_model_dir), precision="32bit", lora_r=4,
                                    lora_alpha=8), seed=0)
    model = loaded.model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    changing = merged_weights(model, torch.float32, changing=True)
    rest = merged_weights(model, torch.float32, changing=False)
    assert not set(changing) & set(rest)
    assert set(changing) | set(rest) == checkpoint_names(str(tiny_model_dir))
    assert any(".q_proj." in k for k in changing) and "model.embed_tokens.weight" in rest
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    for key, value in {**changing, **rest}.items():
        assert torch.equal(value, merged[key]), key
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert unmergeable(model, str(tiny_model_dir)) is None
    assert vllm_weight_sync("auto", model, cpu, str(tiny_model_dir)) == "merged"
    assert vllm_weight_sync("auto", model, gpu, str(tiny_model_dir)) == "lora"
    assert vllm_weight_sync("lora", model, cpu, str(tiny_model_dir)) == "lora"

    for lora, why in ((dict(use_dora=True), "DoRA"),
                      (dict(target_modules=["embed_tokens", "q_proj"]), "tied"),
                      (dict(modules_to_save=["lm_head"]), "beside the adapter")):
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        other = get_peft_model(base, LoraConfig(r=4, **{"target_modules": ["q_proj"], **lora}))
        assert why in unmergeable(other, str(tiny_model_dir))
        assert vllm_weight_sync("auto", other, cpu, str(tiny_model_dir)) == "lora"
        with pytest.raises(VLLMError, match="cannot be used with") as err:
            vllm_weight_sync("merged", other, cpu, str(tiny_model_dir))
        assert "\n" not in str(err.value)


def test_vllm_gpu_share_fits_beside_training():
    """vLLM's share of a GPU it shares with training: its weights, cache and 1 GiB of its own
    work as a share of the whole GPU, refused in one line when that much is not free."""
    from core.generation import gpu_memory_utilization
    from core.vllm_engine import VLLMError

    gib = 2**30
    # a 1.5B model in bf16 (3 GiB) and 2 GiB of cache on an 80 GiB GPU with 70 GiB free
    assert gpu_memory_utilization(5 * gib, 70 * gib, 80 * gib) == 0.075
    assert gpu_memory_utilization(0, 70 * gib, 80 * gib) == 0.05  # at least vLLM's floor
    with pytest.raises(VLLMError) as err:
        gpu_memory_utilization(20 * gib, 10 * gib, 80 * gib)
    assert "21.0 GiB" in str(err.value) and "10.0 GiB are free" in str(err.value)
    assert "\n" not in str(err.value)


def test_base_weights_are_counted_as_the_model_has_them(tiny_model_dir):
    """vLLM holds the original weights: a 4-bit base counts its weights, not its packed bytes."""
    from core.config import ModelConfig
    from core.generation import base_weight_count
    from core.models import load_model

    counts = {}
    for precision in ("32bit", "4bit"):
        loaded = load_model(ModelConfig(source=str(tiny_model_dir), precision=precision,
                                        lora_r=4, lora_alpha=8), seed=0,
                            fast_cpu_generation=False)
        counts[precision] = base_weight_count(loaded.model)
    assert counts["4bit"] == counts["32bit"] > 0
