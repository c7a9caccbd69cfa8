"""Model sources and loading through the real loader."""
import math
import shutil

import pytest
import torch

from core.config import ModelConfig
from core.events import read_events
from core.models import (DEFAULT_CHAT_TEMPLATE, ModelError, embedded_model_dir, load_model,
                         load_tokenizer, resolve_source)


def test_embedded_default_is_a_plain_checkpoint():
    path = embedded_model_dir()
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    assert "quantization_config" not in (path / "config.json").read_text()
    assert resolve_source("default") == str(path)
    tok = load_tokenizer(str(path))
    assert "<|im_start|>" in tok.chat_template  # its own template, not ours


def test_model_without_chat_template_gets_default(tiny_model_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg = (bare / "tokenizer_config.json")
    cfg.write_text(cfg.read_text().replace('"chat_template"', '"unused_template"'))
    tok = load_tokenizer(str(bare))
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("source,words", [
    ("/no/such/folder", "neither"),
    ("not a model id", "neither"),
    ("nobody-here/no-such-model-xyz", "internet"),
])
def test_bad_sources_give_one_line(source, words, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        load_model(ModelConfig(source=source, precision="32bit"))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve_source(str(tmp_path))


@pytest.mark.parametrize("precision,dtype", [("16bit", torch.bfloat16), ("32bit", torch.float32)])
def test_precisions_and_lora(tiny_model_dir, precision, dtype):
    loaded = load_model(ModelConfig(source=str(tiny_model_dir), precision=precision, lora_r=4))
    base = loaded.model.get_base_model()
    assert base.model.layers[0].mlp.down_proj.base_layer.weight.dtype == dtype
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    targets = {n.split(".")[-4] for n in trainable}  # ...q_proj.lora_A.default.weight
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert base.is_gradient_checkpointing


def _lora_grads(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model.train()
    logits = model(input_ids=ids).logits
    (logits.float().log_softmax(-1)[..., :7].sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_4bit_gradients_are_the_same_after_generation(tiny_model_dir):
    """Generation must not leave the 4-bit layers in a layout that has no backward."""
    import bitsandbytes as bnb

    from core.generation import make_engine

    loaded = load_model(ModelConfig(source=str(tiny_model_dir), precision="4bit", lora_r=4,
                                    gradient_checkpointing=False), seed=0)
    model = loaded.model
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    with torch.no_grad():  # a trained-looking adapter, so gradients flow through every layer
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(n)))
    ids = torch.tensor([[1, 20, 300, 4000, 50, 6, 70, 800]])
    before = _lora_grads(model, ids)
    engine = make_engine("auto", model, loaded.tokenizer, loaded.device,
                         weights=loaded.generation_context)
    engine.generate([[1, 20, 300]], num_generations=2, max_new_tokens=4)
    with torch.no_grad():
        model.eval()
        model(input_ids=ids)  # an eval forward outside the engine must not repack either
    after = _lora_grads(model, ids)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert all(before[n].abs().sum() > 0 for n in before if "layers.0." in n and "lora_B" in n)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


def test_packed_generation_copy_matches_training_layout(tiny_model_dir):
    """Where bitsandbytes has a faster CPU layout, generation uses it and agrees with training."""
    import bitsandbytes as bnb

    from core.models import PackedGenerationWeights

    loaded = load_model(ModelConfig(source=str(tiny_model_dir), precision="4bit", lora_r=4),
                        seed=0)
    if not isinstance(loaded.generation_weights, PackedGenerationWeights):
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes has no faster layout to use")
    model = loaded.model.eval()
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(loaded.generation_weights) == len(layers)
    ids = torch.tensor([[1, 20, 300, 4000, 50, 6, 70, 800]])
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        with loaded.generation_context():
            assert all(m.weight.quant_state.packing_format_for_cpu for m in layers)
            packed = model(input_ids=ids).logits
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    # the packed kernel computes in bf16: close to the fp32 training layout, not bit-equal
    assert (packed - reference).abs().max() < 0.05 * reference.abs().max()

    # the output head answers from a bf16 copy inside the context, from its own weight outside
    head = model.get_output_embeddings()
    with torch.no_grad(), loaded.generation_context():
        assert vars(head)["forward"].keywords["weight"].dtype == torch.bfloat16
        with loaded.generation_context():  # nested: the outer use keeps its copies
            pass
        assert "forward" in vars(head) and all(m.weight.quant_state.packing_format_for_cpu
                                               for m in layers)
    assert "forward" not in vars(head)
    # a head whose weight changed in place (tied embeddings trained) is copied again
    with torch.no_grad():
        head.weight.mul_(2.0)
        doubled = model(input_ids=ids).logits
        with loaded.generation_context():
            packed_doubled = model(input_ids=ids).logits
    assert (packed_doubled - doubled).abs().max() < 0.05 * doubled.abs().max()
    assert (packed_doubled - packed).abs().max() > 0.1 * packed.abs().max()


def test_dynamic_4bit_keeps_the_layers_that_lose_most_unquantized_and_trains(tiny_model_dir,
                                                                              tmp_path,
                                                                              monkeypatch):
    """The error of each layer is measured on the model; the worst stay unquantized within the
    budget, the rest are NF4; the measurement is cached; a GRPO step trains through both kinds."""
    import bitsandbytes as bnb

    from core.dynamic4bit import _cache_file, kept_layers, layer_errors
    from core.trainer import Trainer
    from tests.test_trainer import tiny_config

    monkeypatch.setenv("AHA_STUDIO_HOME", str(tmp_path / "home"))
    layers = layer_errors(str(tiny_model_dir))
    assert len(layers) == 2 * 7  # 2 decoder layers x 7 projections; the head is never quantized
    errors = [layer["error"] for layer in layers]
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0
    assert errors[0] > errors[-1]  # measured per layer (random weights differ little)
    cache = _cache_file(str(tiny_model_dir))
    stamp = cache.stat().st_mtime_ns
    assert layer_errors(str(tiny_model_dir)) == layers and cache.stat().st_mtime_ns == stamp

    share = 0.2
    kept = kept_layers(str(tiny_model_dir), share)
    total = sum(layer["params"] for layer in layers)
    assert kept and sum(l["params"] for l in layers if l["name"] in kept) <= share * total
    assert kept[0] == layers[0]["name"]  # the worst layer first
    assert kept_layers(str(tiny_model_dir), 0.0) == []

    loaded = load_model(ModelConfig(source=str(tiny_model_dir), precision="dynamic4bit",
                                    dynamic_keep_share=share, lora_r=4))
    bases = {n.removesuffix(".base_layer"): m for n, m in
             loaded.model.get_base_model().named_modules() if n.endswith(".base_layer")}
    plain = {n for n, m in bases.items() if type(m) is torch.nn.Linear}
    quantized = {n for n, m in bases.items() if isinstance(m, bnb.nn.Linear4bit)}
    assert plain == set(kept) and quantized == {layer["name"] for layer in layers} - set(kept)

    cfg = tiny_config(tiny_model_dir)
    cfg.model.precision, cfg.model.dynamic_keep_share = "dynamic4bit", share
    cfg.train.max_steps = 1
    trainer = Trainer(cfg, tmp_path / "run").setup()
    assert trainer.train() == "finished"
    metrics = [e for e in read_events(tmp_path / "run")[0] if e["type"] == "metrics"]
    assert len(metrics) == 1 and math.isfinite(metrics[0]["loss"])


def test_float32_generation_copy_answers_with_the_same_numbers(tiny_model_dir):
    """On CPUs without bitsandbytes' packed layout, sampling (training's, the evaluation's, the
    studio's chat) runs on float32 copies of the 4-bit weights: the logits, base and adapter,
    stay those of the 4-bit layers, and the 4-bit layers are back, with their backward, after."""
    import bitsandbytes as bnb

    from core.models import Float32GenerationWeights, unpacked_4bit_bytes
    from studio.infer import WarmModels

    loaded = load_model(ModelConfig(source=str(tiny_model_dir), precision="4bit", lora_r=4),
                        seed=0)
    model = loaded.model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert unpacked_4bit_bytes(model) == sum(4 * m.in_features * m.out_features for m in layers)
    copies = loaded.generation_weights
    if not isinstance(copies, Float32GenerationWeights):  # the packed layout on AVX512-BF16
        copies = Float32GenerationWeights(layers)
    assert len(copies) == len(layers) > 0
    ids = torch.tensor([[1, 20, 300, 4000, 50, 6, 70, 800]])
    with torch.no_grad():
        adapter = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        with copies.active():
            assert all("forward" in vars(m) for m in layers)
            assert torch.allclose(model(input_ids=ids).logits, adapter, atol=1e-5, rtol=1e-4)
            with model.disable_adapter():
                assert torch.allclose(model(input_ids=ids).logits, base, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(adapter, base, atol=1e-3)  # the adapter still answers
    assert not any("forward" in vars(m) for m in layers)  # the 4-bit layers are back
    model.train()
    model(input_ids=ids).logits.float().log_softmax(-1)[..., :7].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if "layers.0." in n and "lora_B" in n)

    # the studio's model process samples from a faster copy too (a tiny model always fits)
    served, _ = WarmModels().get({"source": str(tiny_model_dir), "precision": "4bit"})
    assert served.generation_weights is not None


def test_float32_copy_only_when_it_fits(tiny_model_dir, monkeypatch):
    """No float32 copy where it would take more than a quarter of the free memory, or when
    generation.fast_cpu_4bit is off: sampling then runs on the 4-bit layers."""
    import core.generation
    from core.models import Float32GenerationWeights, unpacked_4bit_bytes

    cfg = ModelConfig(source=str(tiny_model_dir), precision="4bit", lora_r=4)
    off = load_model(cfg, seed=0, fast_cpu_generation=False)
    assert off.generation_weights is None
    need = unpacked_4bit_bytes(off.model)
    monkeypatch.setattr(core.generation, "available_memory_bytes", lambda device: 4 * need - 4)
    tight = load_model(cfg, seed=0)
    assert not isinstance(tight.generation_weights, Float32GenerationWeights)
    monkeypatch.setattr(core.generation, "available_memory_bytes", lambda device: 4 * need)
    fits = load_model(cfg, seed=0)
    assert fits.generation_weights is not None




def test_adapters_are_saved_without_asking_the_hub(tiny_model_dir, tmp_path):
    """An adapter whose base is named by its Hub id saves without a Hub lookup (peft's default
    asks the Hub for the base's config at every save, which an offline machine waits on); an
    adapter on the embeddings still saves them."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from core.models import save_adapter_files

    for targets, embedded in ((["q_proj"], False), (["q_proj", "embed_tokens"], True)):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               LoraConfig(r=4, target_modules=targets))
        for config in model.peft_config.values():
            config.base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
        out = tmp_path / "-".join(targets)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            save_adapter_files(model, out)
        said = " ".join(str(w.message) for w in caught)
        assert "HuggingFaceTB/SmolLM2-135M-Instruct" not in said, said
        with safe_open(out / "adapter_model.safetensors", "pt") as f:
            names = list(f.keys())
        assert any("lora_A" in n for n in names)
        assert any("embed_tokens" in n and "lora" not in n for n in names) == embedded, names
