"""Model sources and loading through the real loader."""
import shutil

import pytest
import torch

from core.config import ModelConfig
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
