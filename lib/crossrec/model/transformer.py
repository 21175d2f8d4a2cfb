"""Cross-domain sequential recommender: one causal Transformer over a user's history in every domain.

An item is represented from its frozen text embedding (all-MiniLM-L6-v2, ``gold.item_embeddings``) through a
learned adapter, plus optional id, domain and attribute embeddings (:class:`crossrec.model.encoder.ItemEncoder`). The
user's chronological cross-domain history goes through a causal Transformer (:class:`CrossDomainTransformer`); the
final state, projected per target domain (:class:`DomainHead`), is the user's interest in that domain and is scored
against the items of that domain only: ``score(u, i) = <h_u^d, e_i> + b_i`` with ``d`` the domain of ``i`` and ``b_i``
the item's learned bias (``item_bias``, off by default; with id embeddings only). The item representations leave a
LayerNorm, so their norms are alike and how often an item is chosen at all (its popularity) has no room in the product:
the bias holds it.

Because the item side reads the item's text, an item that never occurred in training still gets a
meaningful representation, and a topic seen in domain A carries over to the items of domain B with similar
text: the cross-domain signal the product relies on. ``use_id_embedding=False`` is the pure text mode.
This module is the model alone: the score terms an artifact may add after training live in :mod:`crossrec.rerank`,
and history -> scores -> top-K in :mod:`crossrec.inference`.

Batch convention (a dict of tensors, the columns of ``gold.user_sequences`` after collation):

==================  ==========  ==============================================================================
key                 shape       meaning
==================  ==========  ==============================================================================
``item_idx``        (B, T) long global item ids (``gold.item_index.item_idx``), oldest first, **right-padded**
                                with 0 (real events at positions ``0..len-1``, padding after them)
``domain_idx``      (B, T) long domain of each event; informational: the model takes an item's domain from
                                :class:`ItemFeatures` (an item belongs to one domain)
``event_ts``        (B, T) long epoch seconds of each event (padding: any value, ignored)
``target_item_idx`` (B, T) long training only: the next item after position t, 0 = no target there
``target_domain``   (B, T) long training only: domain of ``target_item_idx`` (any value where it is 0)
==================  ==========  ==============================================================================

From ``gold.user_sequences``: a train row (whole history ``s``) gives ``item_idx = s[:-1]``,
``target_item_idx = s[1:]``, ``target_domain = domain_idx[1:]``; a valid/test row gives its history as
``item_idx`` and is scored with ``full_sort_predict(batch, target_domain)``.

Right padding plus the causal mask mean a real position never attends to padding, so no key-padding mask
is needed and padding can never change a real state. The user state is read at the last non-pad position;
an empty history (all padding) reads position 0, the state of the padding token.

Interface (shared by every crossrec recommender, after RecBole): ``calculate_loss(batch) -> scalar``,
``predict(batch, item_idx) -> (B,)``, ``full_sort_predict(batch, domain) -> (B, n_items_in_domain)``
(column j = the item with ``domain_item_idx`` j). ``predict`` / ``full_sort_predict`` do not switch off
autograd or dropout: call them under ``model.eval()`` and ``torch.inference_mode()``. ``forward(batch)`` gives
the states (B, T, D); ``forward(batch, loss=True)`` the loss, which is what a DDP-wrapped model must be called
with (DDP prepares its gradient all-reduce inside its own ``forward``).

Weights are saved as safetensors and the config as JSON (:mod:`crossrec.model.artifact`); no pickle. The item
features (text embeddings, domains, ...) are buffers, so a saved model is self-contained. Under DDP wrap
with ``broadcast_buffers=False``: the buffers are constants and the text table can be large.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from crossrec.model.config import ModelConfig
from crossrec.model.encoder import ItemEncoder, ItemFeatures, init_embedding

log = logging.getLogger(__name__)

N_TIME_BUCKETS = 32  # 0 = first event / padding, then 1 + floor(log2(1 + gap_s)), capped (2^30 s ~ 34 years)


def time_gap_buckets(event_ts: Tensor, item_idx: Tensor, n_buckets: int = N_TIME_BUCKETS) -> Tensor:
    """(B, T) epoch seconds -> (B, T) bucket ids: 0 for the first event and padding, else
    ``1 + floor(log2(1 + gap_s))`` capped at ``n_buckets - 1`` (negative gaps count as 0)."""
    gap = (event_ts[:, 1:] - event_ts[:, :-1]).clamp(min=0)  # (B, T-1)
    b = 1 + torch.log2(gap.float() + 1).floor().long().clamp(max=n_buckets - 2)  # (B, T-1)
    b = F.pad(b, (1, 0), value=0)  # (B, T) position 0 has no previous event
    return b.masked_fill(item_idx == 0, 0)


class DomainHead(nn.Module):
    """Per-domain user interest from the shared final state: ``h^d = h + h W_d + b_d``.

    ``W_d`` and ``b_d`` start at zero, so every domain starts from the shared state (what a user likes in one
    domain is the prior for the others) and learns only a residual, linear correction of its own.
    """

    def __init__(self, n_domains: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_domains, d_model, d_model))  # (K, D, D)
        self.bias = nn.Parameter(torch.zeros(n_domains, d_model))  # (K, D)

    def forward(self, h: Tensor, domain: int | Tensor) -> Tensor:
        """h (..., D); domain an int (all rows) or a long tensor (...) -> (..., D)."""
        if not isinstance(domain, Tensor):
            domain = int(domain)
            return h + h @ self.weight[domain] + self.bias[domain]
        every = torch.einsum("...d,kde->...ke", h, self.weight) + self.bias  # (..., K, D)
        picked = every.gather(-2, domain[..., None, None].expand(*domain.shape, 1, h.shape[-1]))  # (..., 1, D)
        return h + picked.squeeze(-2)


class CrossDomainTransformer(nn.Module):
    """Causal Transformer over the cross-domain history; scores the items of one domain at a time.

    input(t) = item_rep(item_t) + pos_emb(t) + gap_emb(bucket(ts_t - ts_{t-1})) -> dropout
    -> causal pre-norm TransformerEncoder -> final LayerNorm -> h_t (B, T, D)
    score(u, i) = <DomainHead(h_last, domain(i)), item_rep(i)> + item_bias(i)

    Positions count from the oldest event of the (truncated) window; recency comes from the time gaps.
    """

    def __init__(self, config: ModelConfig, features: ItemFeatures, *, text_model_path: str | Path | None = None,
                 pretrained_text: bool = True):
        super().__init__()
        c = config
        assert len(features.domain_items) == c.n_domains, f"features have {len(features.domain_items)} domains, config says {c.n_domains}"
        self.config = c
        self.item_encoder = ItemEncoder(c, features, text_model_path=text_model_path, pretrained_text=pretrained_text)
        self.pos_emb = nn.Embedding(c.max_seq_len, c.d_model)
        self.gap_emb = nn.Embedding(N_TIME_BUCKETS, c.d_model) if c.use_time_gaps else None
        self.drop = nn.Dropout(c.dropout)
        layer = nn.TransformerEncoderLayer(c.d_model, c.n_heads, 4 * c.d_model, c.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.n_layers, norm=nn.LayerNorm(c.d_model), enable_nested_tensor=False)
        self.domain_head = DomainHead(c.n_domains, c.d_model)
        for e in (self.pos_emb, self.gap_emb):
            if e is not None:
                init_embedding(e)

        # catalog bookkeeping: persistent ones are saved (crossrec.model.artifact.load_model rebuilds ItemFeatures)
        sizes = [d.numel() for d in features.domain_items]
        self._offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
        self.register_buffer("domain_items_flat", torch.cat([d.reshape(-1).long() for d in features.domain_items]))
        self.register_buffer("domain_offsets", torch.tensor(self._offsets, dtype=torch.long))
        weight = features.sample_weight
        self.register_buffer("sample_weight", torch.ones(c.n_items + 1) if weight is None else weight.float().clone())
        local = torch.full((c.n_items + 1,), -1, dtype=torch.long)  # global id -> column in its domain
        logq = torch.zeros(c.n_items + 1)  # log q(item) of the negative sampler, within the item's domain
        for k, items in enumerate(features.domain_items):
            local[items] = torch.arange(items.numel())
            w = self.sample_weight[items]
            logq[items] = torch.log(w / w.sum())
        self.register_buffer("domain_item_idx", local, persistent=False)
        self.register_buffer("item_logq", logq, persistent=False)
        # one scalar per item id (row 0: padding, never scored), starting at the log of the item's share of its
        # domain's sample_weight (the training counts + 1 in training): the model starts from popularity, and the
        # product learns what a user adds to it (a bias moves lr a step, too slowly to find log-popularity from 0)
        self.item_bias = nn.Parameter(logq.clone()) if c.item_bias and c.use_id_embedding else None
        if c.text_encoder == "finetune" and c.loss == "softmax":
            log.warning("text_encoder='finetune' with loss='softmax' runs the text model over every item of each "
                        "target domain per step; use loss='sampled' beyond toy catalogs")
        n_train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        log.info("CrossDomainTransformer: %.2fM trainable parameters, %d items, %d domains", n_train / 1e6, c.n_items, c.n_domains)

    # ----------------------------------------------------------------------------------------------- catalog
    def domain_items(self, domain: int) -> Tensor:
        """(n_d,) global ids of the domain's items; position j = column j of full_sort_predict."""
        assert 0 <= domain < self.config.n_domains, f"domain {domain} not in 0..{self.config.n_domains - 1}"
        return self.domain_items_flat[self._offsets[domain] : self._offsets[domain + 1]]

    def bias(self, item_idx: Tensor) -> Tensor | float:
        """The items' learned biases b_i (same shape as ``item_idx``); 0.0 for a model without them."""
        return 0.0 if self.item_bias is None else self.item_bias[item_idx]

    def sample_negatives(self, domain: int, n: int) -> Tensor:
        """(n,) global ids drawn with replacement from the domain's items, q proportional to sample_weight."""
        items = self.domain_items(domain)
        return items[torch.multinomial(self.sample_weight[items], n, replacement=True)]

    # ----------------------------------------------------------------------------------------------- encoder
    def _check(self, batch: Mapping[str, Tensor]) -> Tensor:
        item_idx = batch["item_idx"]
        assert item_idx.dim() == 2 and item_idx.dtype == torch.long, (
            f"item_idx must be (B, T) long, got {tuple(item_idx.shape)} {item_idx.dtype}")
        assert item_idx.shape[1] <= self.config.max_seq_len, (
            f"sequence length {item_idx.shape[1]} > max_seq_len {self.config.max_seq_len}: keep the newest events")
        if self.config.use_time_gaps:
            assert batch["event_ts"].shape == item_idx.shape, f"event_ts must be {tuple(item_idx.shape)}"
        real = item_idx != 0
        assert not bool((real[:, 1:] & ~real[:, :-1]).any()), "item_idx must be right-padded: no item after a 0"
        return item_idx

    def _encoder_input(self, batch: Mapping[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        """item reps of the history (B, T, D) -> (encoder input (B, T, D), causal mask (T, T))."""
        item_idx = batch["item_idx"]
        T = item_idx.shape[1]
        x = x + self.pos_emb(torch.arange(T, device=x.device))  # (B, T, D)
        if self.gap_emb is not None:
            x = x + self.gap_emb(time_gap_buckets(batch["event_ts"], item_idx))  # (B, T, D)
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=x.device, dtype=x.dtype)  # (T, T)
        return self.drop(x), causal

    def _states(self, batch: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """item reps of the history (B, T, D) -> final states (B, T, D)."""
        x, causal = self._encoder_input(batch, x)
        return self.encoder(x, mask=causal, is_causal=True)  # (B, T, D)

    def forward(self, batch: Mapping[str, Tensor], *, loss: bool = False) -> Tensor:
        """Final state at every position (B, T, D); position t has seen events 0..t only.

        ``loss=True`` returns :meth:`calculate_loss` instead: under DDP train with ``ddp_model(batch, loss=True)``,
        as DDP synchronises gradients only for computations that went through its ``forward``.
        """
        if loss:
            return self.calculate_loss(batch)
        item_idx = self._check(batch)
        return self._states(batch, self.item_encoder(item_idx))

    def last_states(self, batch: Mapping[str, Tensor], item_table: Tensor | None = None) -> Tensor:
        """The shared user state (B, D): the final state at the last non-pad position (before the domain
        head). ``domain_head(last_states(b), d)`` is h_u^d; compute it once to score several domains.

        ``item_table``: :meth:`item_table` precomputed (eval mode), so that history items are looked up rather
        than re-encoded in every batch; None = encode them here.
        """
        last = ((batch["item_idx"] != 0).sum(1) - 1).clamp(min=0)  # (B,) empty history -> position 0
        if item_table is None:
            h = self(batch)  # (B, T, D)
            return h[torch.arange(h.shape[0], device=h.device), last]  # (B, D)
        x = item_table[self._check(batch)]  # (B, T, D)
        if self.training:
            return self._states(batch, x)[torch.arange(x.shape[0], device=x.device), last]
        return self._last_states_eval(batch, x, last)

    def _last_states_eval(self, batch: Mapping[str, Tensor], x: Tensor, last: Tensor) -> Tensor:
        """Inference only: :meth:`_states` at the ``last`` positions, with the final layer computed for those
        positions alone (its keys and values still come from every position): that layer's query, attention
        output and feed-forward cost 1/T of the full pass. Same result as the full pass, up to rounding."""
        B, T, D = x.shape
        x, causal = self._encoder_input(batch, x)
        *lower, top = self.encoder.layers
        for layer in lower:
            x = layer(x, src_mask=causal, is_causal=True)  # (B, T, D)
        rows = torch.arange(B, device=x.device)
        attn = top.self_attn
        H = attn.num_heads
        w_q, w_kv = attn.in_proj_weight.split([D, 2 * D])
        b_q, b_kv = attn.in_proj_bias.split([D, 2 * D])
        xn = top.norm1(x)  # (B, T, D)
        q = F.linear(xn[rows, last], w_q, b_q).view(B, H, 1, D // H)  # (B, H, 1, Dh)
        k, v = F.linear(xn, w_kv, b_kv).view(B, T, 2, H, D // H).permute(2, 0, 3, 1, 4)  # (B, H, T, Dh) each
        visible = (torch.arange(T, device=x.device)[None, :] <= last[:, None])[:, None, None, :]  # (B, 1, 1, T) causal
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=visible).reshape(B, D)  # (B, D)
        h = x[rows, last] + attn.out_proj(a)  # (B, D)
        h = h + top.linear2(top.activation(top.linear1(top.norm2(h))))
        return self.encoder.norm(h)  # (B, D)

    def user_vectors(self, batch: Mapping[str, Tensor], domain: int | Tensor) -> Tensor:
        """h_u^d (B, D) at the last non-pad position, for one domain (int) or one per row ((B,) long)."""
        return self.domain_head(self.last_states(batch), domain)

    # --------------------------------------------------------------------------------------------- interface
    def calculate_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Mean next-item loss over all positions with a target; each target competes only with the items
        of its own domain (full softmax, or sampled softmax with log-Q correction)."""
        c = self.config
        item_idx = self._check(batch)
        targets, target_domain = batch["target_item_idx"], batch["target_domain"]
        assert targets.shape == item_idx.shape and target_domain.shape == item_idx.shape, "targets must be (B, T) like item_idx"
        has = targets != 0  # (B, T)
        tgt, dom = targets[has], target_domain[has]  # (N,), (N,)
        n = tgt.numel()
        assert n > 0, "batch has no targets (target_item_idx all 0)"
        assert bool((self.item_encoder.item_domain[tgt] == dom).all()), "target_domain disagrees with the target item's domain"

        # candidate ids per domain, then one item-encoder call for history + candidates (one text-model pass)
        domains = dom.unique().tolist()
        rows = {k: (dom == k).nonzero().squeeze(1) for k in domains}  # positions (into tgt) per domain
        if c.loss == "softmax":
            cands = {k: self.domain_items(k) for k in domains}
            ids = [item_idx.reshape(-1), *cands.values()]
        else:
            cands = {k: self.sample_negatives(k, c.n_negatives) for k in domains}
            ids = [item_idx.reshape(-1), tgt, *cands.values()]
        reps = self.item_encoder(torch.cat(ids)).split([i.numel() for i in ids])
        h = self._states(batch, reps[0].view(*item_idx.shape, -1))[has]  # (N, D)

        loss = h.new_zeros(())
        for j, k in enumerate(domains):
            r = rows[k]
            hk = self.domain_head(h[r], k)  # (N_k, D)
            if c.loss == "softmax":
                logits = hk @ reps[1 + j].T + self.bias(cands[k])  # (N_k, n_d)
                loss = loss + F.cross_entropy(logits, self.domain_item_idx[tgt[r]], reduction="sum")
            else:
                neg = cands[k]  # (n_neg,)
                pos_logit = (hk * reps[1][r]).sum(-1) + self.bias(tgt[r]) - self.item_logq[tgt[r]]  # (N_k,)
                neg_logit = hk @ reps[2 + j].T + self.bias(neg) - self.item_logq[neg]  # (N_k, n_neg)
                neg_logit = neg_logit.masked_fill(neg[None, :] == tgt[r][:, None], float("-inf"))  # accidental hits
                logits = torch.cat([pos_logit[:, None], neg_logit], 1)  # (N_k, 1 + n_neg), positive in column 0
                loss = loss + F.cross_entropy(logits, torch.zeros_like(r), reduction="sum")
        return loss / n

    def predict(self, batch: Mapping[str, Tensor], item_idx: Tensor) -> Tensor:
        """Score of one item per user: item_idx (B,) -> (B,), scored with the user vector of the item's domain."""
        assert item_idx.shape == batch["item_idx"].shape[:1], f"item_idx must be (B,), got {tuple(item_idx.shape)}"
        h = self.user_vectors(batch, self.item_encoder.item_domain[item_idx])  # (B, D)
        return (h * self.item_encoder(item_idx)).sum(-1) + self.bias(item_idx)  # (B,)

    @torch.no_grad()
    def clear_id_embeddings(self, item_idx: Tensor, bias_quantile: float | Sequence[float] = 0.5) -> int:
        """Zero the id embeddings of ``item_idx`` (items absent from the training data) and set their biases to the
        ``bias_quantile`` quantile of the biases of their domain's other items (one for every domain, or one per
        domain_idx); return how many.

        Under the full softmax every item of a target's domain is a negative in every step, so the id vector and the
        bias of an item never seen in training are only ever pushed away from users, and they bury the item whatever
        its text says. Cleared, such an item is scored from its text, domain and category (text-only mode for items
        new to the model) with the bias of an item of its domain: by default a typical one (the median); whether the
        items without training events of a data set are its long tail or its new releases, validation decides
        (:func:`crossrec.train.id_shrinkage.choose_cold_bias`). No-op without id embeddings."""
        emb = self.item_encoder.id_emb
        idx = item_idx[item_idx != 0].long()
        if emb is None or idx.numel() == 0:
            return 0
        assert int(idx.max()) <= self.config.n_items and int(idx.min()) > 0, "item ids must be in 1..n_items"
        idx = idx.to(emb.weight.device)
        emb.weight[idx] = 0.0
        if self.item_bias is not None:
            cleared = torch.zeros_like(self.item_bias, dtype=torch.bool)
            cleared[idx] = True
            n = self.config.n_domains
            qs = [float(bias_quantile)] * n if isinstance(bias_quantile, (int, float)) else list(bias_quantile)
            assert len(qs) == n and all(0 <= q <= 1 for q in qs), f"bias_quantile must be in [0, 1]: {bias_quantile}"
            for k in range(n):
                items = self.domain_items(k)
                kept = items[~cleared[items]]
                if kept.numel():
                    self.item_bias[items[cleared[items]]] = torch.quantile(self.item_bias[kept], qs[k])
        return int(idx.unique().numel())

    def item_table(self) -> Tensor:
        """(n_items + 1, D) representation of every item id, row 0 the padding id's. Constant in eval mode."""
        return self.item_encoder(torch.arange(self.config.n_items + 1, device=self.item_encoder.item_domain.device))

    def domain_item_reps(self, domain: int) -> Tensor:
        """(n_d, D) representations of every item of ``domain``, in domain_item_idx order. Constant in eval
        mode: compute once and pass to :meth:`full_sort_predict` when scoring many batches."""
        return self.item_encoder(self.domain_items(int(domain)))

    def full_sort_predict(self, batch: Mapping[str, Tensor], domain: int, item_reps: Tensor | None = None) -> Tensor:
        """The model's scores of every item of ``domain`` (biases included): (B, n_items_in_domain), columns in
        domain_item_idx order.

        ``item_reps``: :meth:`domain_item_reps` of ``domain``, precomputed (eval mode); None = compute here.
        """
        domain = int(domain)
        h = self.user_vectors(batch, domain)  # (B, D)
        reps = self.domain_item_reps(domain) if item_reps is None else item_reps  # (n_d, D)
        assert reps.shape[0] == self.domain_items(domain).numel(), "item_reps must hold every item of the domain"
        return h @ reps.T + self.bias(self.domain_items(domain))  # (B, n_d)


__all__ = ["DomainHead", "CrossDomainTransformer", "time_gap_buckets", "N_TIME_BUCKETS"]
