"""The one declaration of the Transformer's hyper-parameters and their defaults (saved next to the weights as JSON)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of :class:`CrossDomainTransformer` (saved next to the weights as JSON)."""

    n_items: int  # global item ids 1..n_items (0 = padding)
    n_domains: int
    text_dim: int = 384  # all-MiniLM-L6-v2
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.1
    max_seq_len: int = 50
    use_text: bool = True  # learned adapter over the frozen text embedding
    use_id_embedding: bool = True  # False = text-only mode: scores items never seen in training
    item_bias: bool = False  # a learned score offset per item id (with use_id_embedding only)
    id_dropout: float = 0.0  # training: share of item occurrences whose id embedding is dropped (text must carry them)
    n_attr_values: int = 0  # attribute/category ids 1..n_attr_values (0 in item_attr = none); 0 = no attribute
    n_entities: int = 0  # attribute entity ids 1..n_entities (silver.item_entities; 0 in item_entities = none); 0 = off
    vector_dim: int = 0  # width of the items' precomputed vectors (silver.items.vectors, modalities concatenated); 0 = off
    use_time_gaps: bool = True  # bucketised log time gap to the previous event
    loss: str = "softmax"  # "softmax" (full softmax over the target domain's items) | "sampled" (log-Q corrected)
    n_negatives: int = 2048  # for "sampled": negatives drawn per domain per batch, shared by that domain's targets
    text_encoder: str = "frozen"  # "frozen" (precomputed embeddings) | "finetune" (run MiniLM, train top layers)
    finetune_layers: int = 1  # "finetune": how many top transformer layers of the text model are trained

    def __post_init__(self) -> None:
        assert self.n_items >= 1, f"n_items must be >= 1, got {self.n_items}"
        assert self.n_domains >= 1, f"n_domains must be >= 1, got {self.n_domains}"
        assert self.d_model % self.n_heads == 0, f"d_model {self.d_model} not divisible by n_heads {self.n_heads}"
        assert self.use_text or self.use_id_embedding, "need use_text or use_id_embedding (or both)"
        assert self.loss in ("softmax", "sampled"), f"loss must be 'softmax' or 'sampled', got {self.loss!r}"
        assert self.n_negatives >= 1, f"n_negatives must be >= 1, got {self.n_negatives}"
        assert self.text_encoder in ("frozen", "finetune"), f"text_encoder must be 'frozen' or 'finetune', got {self.text_encoder!r}"
        assert self.text_encoder == "frozen" or self.use_text, "text_encoder='finetune' needs use_text=True"
        assert self.finetune_layers >= 0, f"finetune_layers must be >= 0, got {self.finetune_layers}"
        assert self.max_seq_len >= 1 and self.n_attr_values >= 0 and self.n_entities >= 0 and self.vector_dim >= 0, (
            "max_seq_len >= 1, n_attr_values >= 0, n_entities >= 0 and vector_dim >= 0")
        assert 0.0 <= self.id_dropout < 1.0, f"id_dropout must be in [0, 1), got {self.id_dropout}"

    @classmethod
    def from_dict(cls, d: Mapping) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        assert not unknown, f"unknown ModelConfig keys: {sorted(unknown)}"
        return cls(**d)


__all__ = ["ModelConfig"]
