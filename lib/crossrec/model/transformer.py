"""Cross-domain sequential recommender: one causal Transformer over a user's history in every domain.

An item is represented from its frozen text embedding (all-MiniLM-L6-v2, ``gold.item_embeddings``) through a
learned adapter, plus optional id, domain and attribute embeddings (:class:`ItemEncoder`). The user's
chronological cross-domain history goes through a causal Transformer (:class:`CrossDomainTransformer`); the
final state, projected per target domain, is the user's interest in that domain and is scored against the
items of that domain only: ``score(u, i) = <h_u^d, e_i>`` with ``d`` the domain of ``i``.

Because the item side reads the item's text, an item that never occurred in training still gets a
meaningful representation, and a topic seen in domain A carries over to the items of domain B with similar
text: the cross-domain signal the product relies on. ``use_id_embedding=False`` is the pure text mode.
An artifact may also carry score terms fitted after training (:mod:`crossrec.model.cooccurrence`), which
:meth:`~CrossDomainTransformer.full_sort_predict` adds to the scores: a co-occurrence term
(:meth:`~CrossDomainTransformer.set_cooccurrence`), a text-similarity term
(:meth:`~CrossDomainTransformer.set_text_similarity`) and a next-item term
(:meth:`~CrossDomainTransformer.set_transitions`).

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

Weights are saved as safetensors and the config as JSON (:func:`save` / :func:`load`); no pickle. The item
features (text embeddings, domains, ...) are buffers, so a saved model is self-contained. Under DDP wrap
with ``broadcast_buffers=False``: the buffers are constants and the text table can be large.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from crossrec.model.config import ModelConfig
from crossrec.model.encoder import ItemEncoder, ItemFeatures, init_embedding

log = logging.getLogger(__name__)

N_TIME_BUCKETS = 32  # 0 = first event / padding, then 1 + floor(log2(1 + gap_s)), capped (2^30 s ~ 34 years)
# combine_scores sums the co-occurrence pairs into a dense (B, n_d) matrix when they outnumber this share of its
# cells (popular history items on a small catalog), else it adds only the distinct non-zero cells
DENSE_COOCCURRENCE_SHARE = 0.25
# build_term_tables: the most memory the dense (n_d, n_d) item-item tables of the score terms may take, all domains
# and terms together; a domain whose tables do not fit keeps the sparse and (B, text_dim) paths
TERM_TABLE_BYTES = 256 * 2**20
# text term from its table only while the batch's history events of the domain stay under this many per row: the
# sparse (B, n_d) @ (n_d, n_d) product costs ~13x more per multiply-add than the dense (B, text_dim) product on CPU
TEXT_TABLE_MAX_EVENTS = 24
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile


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
    score(u, i) = <DomainHead(h_last, domain(i)), item_rep(i)>

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

        # catalog bookkeeping: persistent ones are saved (load() rebuilds ItemFeatures from them)
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
        self._term_tables: dict[int, dict[str, Tensor]] = {}  # build_term_tables: domain -> term -> (n_d, n_d)
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
                logits = hk @ reps[1 + j].T  # (N_k, n_d)
                loss = loss + F.cross_entropy(logits, self.domain_item_idx[tgt[r]], reduction="sum")
            else:
                neg = cands[k]  # (n_neg,)
                pos_logit = (hk * reps[1][r]).sum(-1) - self.item_logq[tgt[r]]  # (N_k,)
                neg_logit = hk @ reps[2 + j].T - self.item_logq[neg]  # (N_k, n_neg)
                neg_logit = neg_logit.masked_fill(neg[None, :] == tgt[r][:, None], float("-inf"))  # accidental hits
                logits = torch.cat([pos_logit[:, None], neg_logit], 1)  # (N_k, 1 + n_neg), positive in column 0
                loss = loss + F.cross_entropy(logits, torch.zeros_like(r), reduction="sum")
        return loss / n

    def predict(self, batch: Mapping[str, Tensor], item_idx: Tensor) -> Tensor:
        """Score of one item per user: item_idx (B,) -> (B,), scored with the user vector of the item's domain."""
        assert item_idx.shape == batch["item_idx"].shape[:1], f"item_idx must be (B,), got {tuple(item_idx.shape)}"
        h = self.user_vectors(batch, self.item_encoder.item_domain[item_idx])  # (B, D)
        return (h * self.item_encoder(item_idx)).sum(-1)  # (B,)

    @torch.no_grad()
    def clear_id_embeddings(self, item_idx: Tensor) -> int:
        """Zero the id embeddings of ``item_idx`` (items absent from the training data); return how many.

        Under the full softmax every item of a target's domain is a negative in every step, so the id vector of an
        item never seen in training is only ever pushed away from users, and it drowns the item's text. Zeroed,
        such an item is scored from its text, domain and category alone (text-only mode for items new to the
        model). No-op without id embeddings."""
        emb = self.item_encoder.id_emb
        idx = item_idx[item_idx != 0].long()
        if emb is None or idx.numel() == 0:
            return 0
        assert int(idx.max()) <= self.config.n_items and int(idx.min()) > 0, "item ids must be in 1..n_items"
        emb.weight[idx.to(emb.weight.device)] = 0.0
        return int(idx.unique().numel())

    def item_table(self) -> Tensor:
        """(n_items + 1, D) representation of every item id, row 0 the padding id's. Constant in eval mode."""
        return self.item_encoder(torch.arange(self.config.n_items + 1, device=self.item_encoder.item_domain.device))

    def domain_item_reps(self, domain: int) -> Tensor:
        """(n_d, D) representations of every item of ``domain``, in domain_item_idx order. Constant in eval
        mode: compute once and pass to :meth:`full_sort_predict` when scoring many batches."""
        return self.item_encoder(self.domain_items(int(domain)))

    def full_sort_predict(self, batch: Mapping[str, Tensor], domain: int, item_reps: Tensor | None = None,
                          item_cov: Tensor | None = None) -> Tensor:
        """Scores of every item of ``domain``: (B, n_items_in_domain), columns in domain_item_idx order.

        ``item_reps``: :meth:`domain_item_reps` of ``domain``, precomputed (eval mode); None = compute here.
        With a co-occurrence term or a cold-user popularity term attached (:meth:`set_cooccurrence`), the scores
        are :meth:`combine_scores`'; ``item_cov``: :meth:`score_covariance` of ``item_reps``, precomputed; None =
        compute here when needed.
        """
        domain = int(domain)
        h = self.user_vectors(batch, domain)  # (B, D)
        reps = self.domain_item_reps(domain) if item_reps is None else item_reps  # (n_d, D)
        assert reps.shape[0] == self.domain_items(domain).numel(), "item_reps must hold every item of the domain"
        scores = h @ reps.T  # (B, n_d)
        if not self.has_score_terms(domain):
            return scores
        cov = self.score_covariance(reps) if item_cov is None else item_cov
        return self.combine_scores(scores, batch["item_idx"], domain, h, cov)

    # -------------------------------------------------------------------------------- co-occurrence term
    # A dot product of d_model dimensions is a low-rank model: it ranks popular items well but cannot hold the
    # many item-to-item pairs that decide long-tail targets (items with a handful of training interactions).
    # The artifact can carry those pairs as a sparse same-domain item-item similarity (fitted after training,
    # see crossrec.model.cooccurrence) that is added to the Transformer's scores with one weight per domain.
    # With it comes a popularity term for users who have no event in the target domain (cross-domain cold start:
    # the co-occurrence term has nothing to add there), also weighted per domain on the validation split.
    @property
    def has_cooccurrence(self) -> bool:
        return hasattr(self, "cooc_weight")

    def cooccurrence_weight(self, domain: int) -> float:
        """The co-occurrence term's weight in ``domain``; 0.0 when no term is attached."""
        return float(self.cooc_weight[int(domain)]) if self.has_cooccurrence else 0.0

    def cooccurrence_decay(self, domain: int) -> float:
        """The recency decay of the co-occurrence term in ``domain`` (1.0 = every history item counts alike)."""
        return float(self.cooc_decay[int(domain)]) if self.has_cooccurrence else 1.0

    def cold_popularity_weight(self, domain: int) -> float:
        """The weight of the popularity term for users without history in ``domain``; 0.0 when none is attached."""
        return float(self.cooc_cold_weight[int(domain)]) if self.has_cooccurrence else 0.0

    def has_score_terms(self, domain: int) -> bool:
        """Whether :meth:`combine_scores` changes ``domain``'s scores (a co-occurrence, cold-user popularity,
        text-similarity, cold-user text or next-item weight above 0); if not, the scores are the Transformer's alone."""
        return (self.cooccurrence_weight(domain) != 0.0 or self.cold_popularity_weight(domain) != 0.0
                or self.text_similarity_weight(domain) != 0.0 or self.transition_weight(domain) != 0.0
                or self.cold_text_weight(domain) != 0.0)

    # ------------------------------------------------------------------------------- text-similarity term
    # The Transformer sees an item's text only through a d_model-dimensional adapter, trained for what predicts
    # the next item on average; the closeness of two titles in the text encoder's own space (another flavour or
    # size of the same product, the same series) is mostly lost in it. The text-similarity term adds it back:
    # the cosine, in the frozen text embeddings, between the candidate and the user's recent items of the
    # domain. It needs no training events, so it also ranks items never seen in training. A user new to the domain
    # has no such items; for them a second weight adds the cosines to *all* their recent items, in any domain
    # (cold_text_scores): the text encoder links what they did elsewhere to this domain's items.
    @property
    def can_text_similarity(self) -> bool:
        """Whether the model has a frozen text table (``text_encoder='frozen'`` with text): the text term's input."""
        return getattr(self.item_encoder, "text_emb", None) is not None

    @property
    def has_text_similarity(self) -> bool:
        return hasattr(self, "text_sim_weight")

    def text_similarity_weight(self, domain: int) -> float:
        """The text-similarity term's weight in ``domain``; 0.0 when no term is attached."""
        return float(self.text_sim_weight[int(domain)]) if self.has_text_similarity else 0.0

    def text_similarity_decay(self, domain: int) -> float:
        """The recency decay of the text-similarity term in ``domain`` (1.0 = every history event counts alike)."""
        return float(self.text_sim_decay[int(domain)]) if self.has_text_similarity else 1.0

    def cold_text_weight(self, domain: int) -> float:
        """The weight of the cross-domain text term for users without history in ``domain``; 0.0 when none."""
        return float(self.text_sim_cold_weight[int(domain)]) if self.has_text_similarity else 0.0

    def cold_text_decay(self, domain: int) -> float:
        """The recency decay of the cross-domain text term for users new to ``domain`` (1.0 = all events alike)."""
        return float(self.text_sim_cold_decay[int(domain)]) if self.has_text_similarity else 1.0

    def set_text_similarity(self, weight: Tensor, decay: Tensor | None = None, cold_weight: Tensor | None = None,
                            cold_decay: Tensor | None = None) -> None:
        """Attach the text-similarity term: ``weight`` (n_domains,) >= 0 its weight per domain (0 = off there) and
        ``decay`` (n_domains,) in (0, 1] its recency decay (None = 1); ``cold_weight`` / ``cold_decay`` the same
        for the cross-domain text term of users without history in the domain (:meth:`cold_text_scores`; None =
        off / 1). Needs the frozen text table (:attr:`can_text_similarity`). Saved with the model (buffers
        ``text_sim_*``)."""
        assert self.can_text_similarity, "the text-similarity term needs a frozen text table (use_text, text_encoder='frozen')"
        decay = self._check_weights(weight, decay)
        cold_weight = torch.zeros(self.config.n_domains) if cold_weight is None else cold_weight
        cold_decay = self._check_weights(cold_weight, cold_decay)
        device = self.domain_offsets.device
        self.register_buffer("text_sim_weight", weight.float().to(device))
        self.register_buffer("text_sim_decay", decay.float().to(device))
        self.register_buffer("text_sim_cold_weight", cold_weight.float().to(device))
        self.register_buffer("text_sim_cold_decay", cold_decay.float().to(device))
        # the unit-length text table, once (derived: not saved; scoring would otherwise normalise per batch)
        self.register_buffer("text_unit", F.normalize(self.item_encoder.text_emb.float(), dim=1), persistent=False)
        self._term_tables = {}

    def _text_units(self) -> Tensor:
        """(n_items + 1, text_dim) the frozen text embeddings scaled to unit length (a zero vector stays 0)."""
        unit = getattr(self, "text_unit", None)
        return F.normalize(self.item_encoder.text_emb.float(), dim=1) if unit is None else unit

    def domain_text_units(self, domain: int) -> Tensor:
        """(n_d, text_dim) the frozen text embeddings of ``domain``'s items scaled to unit length (a zero vector
        stays 0), in domain_item_idx order."""
        return self._text_units()[self.domain_items(int(domain))]

    def _text_history_weights(self, item_idx: Tensor, domain: int | None, decay: float | None) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T) histories -> the rows, global item ids and weights ``decay**age(t)`` of the events of ``domain``
        (``age(t)``: the events of the domain after ``t``, 0 = the latest); ``domain`` None: every event, ``decay``
        then required."""
        r = self.text_similarity_decay(domain) if decay is None else float(decay)
        in_d = item_idx != 0  # (B, T)
        if domain is not None:
            in_d = in_d & (self.item_encoder.item_domain[item_idx] == int(domain))
        after = in_d.flip(1).cumsum(1).flip(1) - 1  # events of the domain after each position
        rows, pos = in_d.nonzero(as_tuple=True)
        return rows, item_idx[rows, pos], torch.pow(torch.tensor(r, device=item_idx.device), after[rows, pos].float())

    def text_history_vectors(self, item_idx: Tensor, domain: int, decay: float | None = None) -> Tensor:
        """(B, T) histories -> (B, text_dim): ``q_u = sum_t decay**age(t) * e_t / |e_t|`` over the history events
        ``t`` of ``domain`` (``e`` the frozen text embedding, ``age(t)`` the events of the domain after ``t``:
        0 = the latest); 0 for users without history there. ``decay``: instead of the attached one."""
        return self._text_vectors(*self._text_history_weights(item_idx, domain, decay), item_idx.shape[0])

    def _text_vectors(self, rows: Tensor, items: Tensor, weights: Tensor, n_rows: int) -> Tensor:
        """(n_rows, text_dim): row r = sum of ``weights[k]`` times item ``items[k]``'s unit text vector over the
        entries k with rows[k] = r."""
        unit = self._text_units()
        # (B, n_items + 1) sparse weights @ the unit table: 5x faster on CPU than gathering the events' rows
        w = torch.sparse_coo_tensor(torch.stack([rows, items]), weights, (n_rows, unit.shape[0]), check_invariants=False)
        return torch.sparse.mm(w, unit)

    def text_similarity_scores(self, item_idx: Tensor, domain: int, decay: float | None = None,
                               text_units: Tensor | None = None) -> Tensor:
        """(B, T) histories -> (B, n_d): ``t(u, j) = sum_t decay**age(t) * cos(e_t, e_j)`` (see
        :meth:`text_history_vectors`); ``text_units``: :meth:`domain_text_units`, precomputed. With the domain's
        cosine table (:meth:`build_term_tables`) and short histories, the history's cosines are summed from it."""
        B = item_idx.shape[0]
        rows, items, w = self._text_history_weights(item_idx, domain, decay)
        table = self._term_tables.get(int(domain), {}).get("text") if text_units is None else None
        if table is not None and rows.numel() <= TEXT_TABLE_MAX_EVENTS * B:
            return _sparse_rows_times(rows, self.domain_item_idx[items], w, B, table)
        units = self.domain_text_units(domain) if text_units is None else text_units
        return self._text_vectors(rows, items, w, B) @ units.T  # text_history_vectors @ units.T

    def cold_text_scores(self, item_idx: Tensor, domain: int, decay: float | None = None,
                         text_units: Tensor | None = None) -> Tensor:
        """(B, T) histories -> (B, n_d): ``x(u, j) = sum_t decay**age(t) * cos(e_t, e_j)`` over *every* history
        event ``t`` (any domain; ``age(t)``: the events after ``t``, 0 = the latest) -- for a user new to
        ``domain`` all of them are in other domains: the text encoder's bridge from what the user did elsewhere
        to this domain's items. ``decay``: instead of the attached one; ``text_units``: :meth:`domain_text_units`,
        precomputed."""
        r = self.cold_text_decay(domain) if decay is None else float(decay)
        units = self.domain_text_units(domain) if text_units is None else text_units
        return self._text_vectors(*self._text_history_weights(item_idx, None, r), item_idx.shape[0]) @ units.T

    # ------------------------------------------------------------------------------------ next-item term
    # Item-KNN's similarity is symmetric and order-free; which item *follows* which is a sharper signal on
    # next-item data (a refill after the starter kit, the next volume). The next-item term (a first-order Markov
    # chain over each domain's events, as in FPMC) adds, for the user's latest item i of the domain, how often
    # each item j came right after i in the training sequences.
    @property
    def has_transitions(self) -> bool:
        return hasattr(self, "trans_weight")

    def transition_weight(self, domain: int) -> float:
        """The next-item term's weight in ``domain``; 0.0 when no term is attached."""
        return float(self.trans_weight[int(domain)]) if self.has_transitions else 0.0

    def set_transitions(self, indptr: Tensor, indices: Tensor, values: Tensor, weight: Tensor) -> None:
        """Attach the next-item term: a CSR matrix (n_items+1, n_items+1) whose row ``i`` holds the items ``j`` of
        ``i``'s domain that came right after ``i`` in a user's events of that domain, ``values`` how often
        (:func:`crossrec.model.cooccurrence.next_item_transitions`); ``weight`` (n_domains,) >= 0 its weight per
        domain (0 = off there). Saved with the model (buffers ``trans_*``)."""
        self._check_item_pairs(indptr, indices, values, "transitions")
        self._check_weights(weight)
        device = self.domain_offsets.device
        self.register_buffer("trans_indptr", indptr.long().to(device))
        self.register_buffer("trans_indices", indices.int().to(device))
        self.register_buffer("trans_values", values.float().to(device))
        self.register_buffer("trans_weight", weight.float().to(device))
        self._term_tables = {}

    def latest_domain_items(self, item_idx: Tensor, domain: int) -> Tensor:
        """(B, T) histories -> (B,) each row's latest item of ``domain``; 0 for rows without one."""
        in_d = (item_idx != 0) & (self.item_encoder.item_domain[item_idx] == int(domain))  # (B, T)
        pos = torch.arange(item_idx.shape[1], device=item_idx.device)
        last = torch.where(in_d, pos, -1).amax(1)  # (B,)
        return torch.where(last >= 0, item_idx.gather(1, last.clamp(min=0)[:, None]).squeeze(1), 0)

    def transition_scores(self, item_idx: Tensor, domain: int) -> Tensor:
        """(B, T) histories -> (B, n_d): ``m(u, j) = count(i -> j) / max_j' count(i -> j')`` for ``i`` the row's
        latest item of ``domain``; 0 for rows without one, or whose latest item was never followed."""
        assert self.has_transitions, "no next-item term attached (set_transitions)"
        B, n_d = item_idx.shape[0], self.domain_items(int(domain)).numel()
        last = self.latest_domain_items(item_idx, domain)  # (B,); 0 = none (row 0 of the matrix is empty)
        table = self._term_tables.get(int(domain), {}).get("next")
        if table is not None:  # (n_d + 1, n_d): row n_d (no latest item) is 0
            return table[torch.where(last > 0, self.domain_item_idx[last], n_d)]
        flat, lens = _csr_entries(self.trans_indptr, last)
        rows = torch.repeat_interleave(torch.arange(B, device=item_idx.device), lens)
        values = self.trans_values[flat]
        top = torch.zeros(B, device=item_idx.device).scatter_reduce(0, rows, values, "amax")
        out = torch.zeros(B, n_d, device=item_idx.device)
        out[rows, self.domain_item_idx[self.trans_indices[flat].long()]] = values / top[rows].clamp(min=1e-12)
        return out

    def _check_weights(self, weight: Tensor, decay: Tensor | None = None) -> Tensor:
        """Assert ``weight`` is (n_domains,) >= 0 and ``decay`` (n_domains,) in (0, 1]; returns the decay (None = 1)."""
        assert weight.shape == (self.config.n_domains,), f"weight must be ({self.config.n_domains},), got {tuple(weight.shape)}"
        assert bool((weight >= 0).all()), f"weights must be >= 0, got {weight.tolist()}"
        decay = torch.ones(self.config.n_domains) if decay is None else decay
        assert decay.shape == weight.shape, f"decay must be ({self.config.n_domains},), got {tuple(decay.shape)}"
        assert bool(((decay > 0) & (decay <= 1)).all()), f"decays must be in (0, 1], got {decay.tolist()}"
        return decay

    def _check_item_pairs(self, indptr: Tensor, indices: Tensor, values: Tensor, what: str) -> None:
        """Assert that ``(indptr, indices, values)`` is a CSR matrix (n_items+1, n_items+1) of values >= 0 whose
        pairs lie within one domain."""
        n = self.config.n_items + 1
        assert indptr.shape == (n + 1,), f"indptr must be ({n + 1},), got {tuple(indptr.shape)}"
        assert indices.shape == values.shape and indices.dim() == 1, "indices and values must be 1-d of one length"
        assert int(indptr[0]) == 0 and int(indptr[-1]) == indices.numel(), "indptr must run from 0 to nnz"
        if indices.numel():
            assert bool((values >= 0).all()), f"{what}: values must be >= 0"
            assert 1 <= int(indices.min()) and int(indices.max()) < n, f"indices must be item ids 1..{n - 1}"
            rows = torch.repeat_interleave(torch.arange(n), (indptr[1:] - indptr[:-1]).cpu())
            dom = self.item_encoder.item_domain.cpu()
            assert bool((dom[rows] == dom[indices.long().cpu()]).all()), f"{what} must be within one domain"

    def set_cooccurrence(self, indptr: Tensor, indices: Tensor, values: Tensor, weight: Tensor,
                         decay: Tensor | None = None, popularity: Tensor | None = None,
                         cold_weight: Tensor | None = None) -> None:
        """Attach the co-occurrence term: a CSR matrix (n_items+1, n_items+1) whose row ``i`` holds the items
        ``j`` of ``i``'s domain that history item ``i`` supports, with similarity ``values``; ``weight``
        (n_domains,) its weight per domain (0 = that domain is scored by the Transformer alone); ``decay``
        (n_domains,) in (0, 1], the recency decay per domain (a history item followed by ``a`` more events of
        its domain counts ``decay**a``; None = 1, no decay). With it, the popularity term for users without
        history in a domain: ``popularity`` (n_items+1,) each item's popularity feature
        (:func:`crossrec.model.cooccurrence.popularity_feature`; None = 0) and ``cold_weight`` (n_domains,) >= 0
        its weight per domain (None = 0: off). Saved with the model (buffers ``cooc_*``)."""
        n = self.config.n_items + 1
        self._check_item_pairs(indptr, indices, values, "co-occurrence pairs")
        decay = self._check_weights(weight, decay)
        popularity = torch.zeros(n) if popularity is None else popularity
        assert popularity.shape == (n,), f"popularity must be ({n},), got {tuple(popularity.shape)}"
        cold_weight = torch.zeros(self.config.n_domains) if cold_weight is None else cold_weight
        assert cold_weight.shape == weight.shape, f"cold_weight must be ({self.config.n_domains},)"
        assert bool((cold_weight >= 0).all()), f"cold weights must be >= 0, got {cold_weight.tolist()}"
        device = self.domain_offsets.device
        self.register_buffer("cooc_indptr", indptr.long().to(device))
        self.register_buffer("cooc_indices", indices.int().to(device))  # int32: half the artifact size
        self.register_buffer("cooc_values", values.float().to(device))
        self.register_buffer("cooc_weight", weight.float().to(device))
        self.register_buffer("cooc_decay", decay.float().to(device))
        self.register_buffer("cooc_popularity", popularity.float().to(device))
        self.register_buffer("cooc_cold_weight", cold_weight.float().to(device))
        self._term_tables = {}

    def cooccurrence_pairs(self, item_idx: Tensor, domain: int) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T) histories -> one entry per (distinct history item i in ``domain``, neighbour j) pair: flat
        cell positions ``row * n_d + column`` of the (B, n_d) scores (repeated where several history items
        support the same j), ``sim(i, j)``, and i's age: how many events of ``domain`` follow i's last
        occurrence in the history (0 = the latest). Input of :meth:`combine_scores` (``pairs=``)."""
        assert self.has_cooccurrence, "no co-occurrence term attached (set_cooccurrence)"
        n_d = self.domain_items(int(domain)).numel()
        rows, items, age = self._distinct_history_items(item_idx, domain)
        flat, lens = _csr_entries(self.cooc_indptr, items)  # every neighbour of each history item
        cells = torch.repeat_interleave(rows, lens) * n_d + self.domain_item_idx[self.cooc_indices[flat].long()]
        return cells, self.cooc_values[flat], torch.repeat_interleave(age, lens)

    def _distinct_history_items(self, item_idx: Tensor, domain: int) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T) histories -> each distinct (row, history item of ``domain``): its row, item id and age (how many
        events of the domain follow the item's last occurrence; 0 = the latest)."""
        n = self.config.n_items + 1
        in_d = (item_idx != 0) & (self.item_encoder.item_domain[item_idx] == int(domain))
        after = in_d.flip(1).cumsum(1, dtype=torch.int32).flip(1) - 1  # (B, T): events of the domain after each position
        rows, pos = in_d.nonzero(as_tuple=True)
        key, where = torch.unique(rows * n + item_idx[rows, pos], return_inverse=True)  # distinct (user, item)
        age = torch.full((key.numel(),), torch.iinfo(torch.int32).max, dtype=torch.int32, device=item_idx.device)
        age = age.scatter_reduce(0, where, after[rows, pos], "amin")  # the item's last occurrence
        return key // n, key % n, age

    def _cooccurrence_cells(self, item_idx: Tensor, domain: int, decay: float | None = None) -> tuple[Tensor, Tensor]:
        """(B, T) histories -> the non-zero cells of the (B, n_d) co-occurrence scores: flat positions
        ``row * n_d + column`` (distinct, sorted) and their values ``sum_i decay**age(i) * sim(i, j)`` over the
        distinct history items ``i`` of the row in ``domain``."""
        cells, sims, age = self.cooccurrence_pairs(item_idx, domain)
        return _distinct_cells(cells, _decayed(sims, age, self.cooccurrence_decay(domain) if decay is None else decay))

    def cooccurrence_scores(self, item_idx: Tensor, domain: int, decay: float | None = None) -> Tensor:
        """(B, T) histories -> (B, n_d): ``c(u, j) = sum_i decay**age(i) * sim(i, j)`` over the distinct history
        items ``i`` in ``domain`` (item-KNN's score, from the attached matrix, recent items weighted up when
        decay < 1; ``decay``: instead of the attached one); 0 for users without history there."""
        B, n_d = item_idx.shape[0], self.domain_items(int(domain)).numel()
        cells, values = self._cooccurrence_cells(item_idx, domain, decay)
        return torch.zeros(B * n_d, device=item_idx.device).index_put_((cells,), values).view(B, n_d)

    # ----------------------------------------------------------------------------------- term tables
    # Each score term is a sum over the user's history items i of an item-item value v(i, j): the co-occurrence
    # similarity, the text cosine, the next-item count of the latest item. For a small domain those values fit
    # in dense (n_d, n_d) tables, and a batch's terms become one gather or one sparse (B, n_d) @ (n_d, n_d)
    # product each: the same sums, without sorting the (history item, neighbour) pairs or the (B, text_dim)
    # product of the text term. The scorer builds them once per process.
    def build_term_tables(self, max_bytes: int = TERM_TABLE_BYTES) -> list[int]:
        """Precompute, for every domain with score terms whose dense tables fit ``max_bytes`` (all domains and
        terms together, smallest domains first), an (n_d, n_d) table per attached term: ``cooc`` the
        co-occurrence similarity, ``text`` the cosines of the items' frozen text embeddings, ``next`` the
        next-item counts divided by their row's maximum (plus a zero row n_d: no latest item). The scores are
        unchanged up to float rounding; :meth:`combine_scores` then reads them. Built on the model's device (call
        it after moving the model); not saved; attaching a term again drops them. Returns the domains that got
        tables."""
        self._term_tables = {}
        used = 0
        sizes = {d: self.domain_items(d).numel() for d in range(self.config.n_domains)}
        for d in sorted(sizes, key=sizes.get):
            n_d = sizes[d]
            terms = [name for name, on in (("cooc", self.cooccurrence_weight(d) != 0.0),
                                           ("text", self.text_similarity_weight(d) != 0.0),
                                           ("next", self.transition_weight(d) != 0.0)) if on]
            need = sum((n_d + (name == "next")) * n_d * 4 for name in terms)
            if not terms or used + need > max_bytes:
                continue
            used += need
            items, dev = self.domain_items(d), self.domain_offsets.device
            tables = {}
            for name, (indptr, indices, values) in (("cooc", ("cooc_indptr", "cooc_indices", "cooc_values")),
                                                    ("next", ("trans_indptr", "trans_indices", "trans_values"))):
                if name in terms:
                    indptr, indices, values = (getattr(self, a) for a in (indptr, indices, values))
                    flat, lens = _csr_entries(indptr, items)
                    rows = torch.repeat_interleave(torch.arange(n_d, device=dev), lens)
                    cols, vals = self.domain_item_idx[indices[flat].long()], values[flat]
                    if name == "next":  # m(i, .) = count(i -> .) / max count(i -> .)
                        top = torch.zeros(n_d, device=dev).scatter_reduce(0, rows, vals, "amax")
                        vals = vals / top[rows].clamp(min=1e-12)
                    table = torch.zeros(n_d + (name == "next"), n_d, device=dev)
                    tables[name] = table.index_put_((rows, cols), vals, accumulate=True)
            if "text" in terms:
                units = self.domain_text_units(d)
                tables["text"] = units @ units.T
            self._term_tables[d] = tables
        if self._term_tables:
            log.info("score-term tables for domains %s: %.0f MiB", sorted(self._term_tables), used / 2**20)
        return sorted(self._term_tables)

    @staticmethod
    def score_covariance(item_reps: Tensor) -> Tensor:
        """(n_d, D) item representations -> (D, D) covariance over the items (unbiased): the standard deviation
        of a user's scores ``h @ item_reps.T`` is ``sqrt(h cov h)``, without a pass over the (B, n_d) scores."""
        return torch.cov(item_reps.float().T)

    def combine_scores(self, scores: Tensor, item_idx: Tensor, domain: int, h: Tensor, item_cov: Tensor,
                       weight: float | None = None, decay: float | None = None,
                       pairs: tuple[Tensor, Tensor, Tensor] | None = None, cold_weight: float | None = None,
                       text_weight: float | None = None, text_decay: float | None = None,
                       text_scores: Tensor | None = None, next_weight: float | None = None,
                       cold_text_weight: float | None = None, cold_text_decay: float | None = None,
                       cold_text_scores: Tensor | None = None) -> Tensor:
        """The Transformer's scores ``h @ item_reps.T`` (B, n_d) plus the co-occurrence, text-similarity and
        next-item terms of ``domain``, and for users without history in ``domain`` its popularity term:

            score(u, j) = s(u, j) + std_j(s(u, .)) * (w_d * c(u, j) / max_j c(u, j) + t_d * t(u, j) + m_d * m(u, j))
            c(u, j)     = sum_i decay_d**age(i) * sim(i, j)       (see cooccurrence_pairs)
            t(u, j)     = sum_t tdecay_d**age(t) * cos(e_t, e_j)  (see text_similarity_scores)
            m(u, j)     = count(i -> j) / max_j count(i -> j), i = u's latest item in the domain (transition_scores)
            score(u, j) = s(u, j) + std_j(s(u, .)) * (p_d * pop(j) + x_d * x(u, j))    (u has no event in the
                          domain: c = t = m = 0; x = the cross-domain text term, see cold_text_scores)

        which ranks as ``z(s(u, .)) + w_d * c / max c + t_d * t + m_d * m`` (each row standardised), resp.
        ``z(s(u, .)) + p_d * pop + x_d * x``. The terms are added in that order (the fit chooses them in it). The
        co-occurrence term touches only the non-zero ``c`` cells (or sums ``c`` densely when the history's (item,
        neighbour) pairs outnumber ``DENSE_COOCCURRENCE_SHARE`` of the B x n_d cells); the standard deviation comes
        from ``item_cov`` (:meth:`score_covariance`) and the user vectors ``h`` (B, D). ``weight``, ``decay``,
        ``cold_weight``, ``text_weight``, ``text_decay``, ``next_weight``, ``cold_text_weight``, ``cold_text_decay``:
        instead of the attached ones; ``pairs``: :meth:`cooccurrence_pairs` of ``item_idx``, ``text_scores``:
        :meth:`text_similarity_scores` of ``item_idx`` (at ``text_decay``), ``cold_text_scores``:
        :meth:`cold_text_scores` of ``item_idx`` (at ``cold_text_decay``), precomputed (fitting tries many weights
        on one batch). Unchanged when every weight is 0.
        """
        w = self.cooccurrence_weight(domain) if weight is None else float(weight)
        p = self.cold_popularity_weight(domain) if cold_weight is None else float(cold_weight)
        t = self.text_similarity_weight(domain) if text_weight is None else float(text_weight)
        m = self.transition_weight(domain) if next_weight is None else float(next_weight)
        x = self.cold_text_weight(domain) if cold_text_weight is None else float(cold_text_weight)
        if w == 0.0 and p == 0.0 and t == 0.0 and m == 0.0 and x == 0.0:
            return scores
        std = torch.einsum("bd,de,be->b", h.float(), item_cov, h.float()).clamp(min=0).sqrt()  # (B,)
        out = scores
        if w != 0.0:
            out = self._add_cooccurrence(scores, item_idx, domain, w * std, decay, pairs)
        if t != 0.0:  # after the co-occurrence term: the fit adds it to scores that already hold that term
            ts = self.text_similarity_scores(item_idx, domain, text_decay) if text_scores is None else text_scores
            out = out + ((t * std)[:, None] * ts).to(scores.dtype)
        if m != 0.0:
            out = out + ((m * std)[:, None] * self.transition_scores(item_idx, domain)).to(scores.dtype)
        if p != 0.0 or x != 0.0:
            cold = ~((item_idx != 0) & (self.item_encoder.item_domain[item_idx] == int(domain))).any(1)  # (B,)
            rows = cold.nonzero().squeeze(1)  # only these rows change: a batch of known users costs no (B, n_d) pass
            if rows.numel():
                add = torch.zeros(rows.numel(), scores.shape[1], device=scores.device)
                if p != 0.0:
                    pop = self.cooc_popularity[self.domain_items(int(domain))]  # (n_d,)
                    add += (p * std[rows])[:, None] * pop[None, :]
                if x != 0.0:
                    xs = (self.cold_text_scores(item_idx[rows], domain, cold_text_decay) if cold_text_scores is None
                          else cold_text_scores[rows])
                    add += (x * std[rows])[:, None] * xs
                out = out.index_add(0, rows, add.to(scores.dtype))
        return out

    def _add_cooccurrence(self, scores: Tensor, item_idx: Tensor, domain: int, scale: Tensor, decay: float | None,
                          pairs: tuple[Tensor, Tensor, Tensor] | None) -> Tensor:
        """``scores + scale[:, None] * c / max_j c`` (rows without co-occurrence support unchanged)."""
        B, n_d = scores.shape
        decay = self.cooccurrence_decay(domain) if decay is None else float(decay)
        table = self._term_tables.get(int(domain), {}).get("cooc") if pairs is None else None
        if table is not None:  # c = (B, n_d) decayed history weights @ the (n_d, n_d) similarity table
            rows, items, age = self._distinct_history_items(item_idx, domain)
            weights = _decayed(torch.ones_like(age, dtype=torch.float), age, decay)  # decay**age
            c = _sparse_rows_times(rows, self.domain_item_idx[items], weights, B, table)
        else:
            flat, sims, age = self.cooccurrence_pairs(item_idx, domain) if pairs is None else pairs
            sims = _decayed(sims, age, decay)
            if flat.numel() <= DENSE_COOCCURRENCE_SHARE * B * n_d:  # add only the distinct non-zero cells
                cells, values = _distinct_cells(flat, sims)
                rows = cells // n_d
                top = torch.zeros(B, device=scores.device).scatter_reduce(0, rows, values, "amax")  # max_j c (c >= 0)
                scale = scale / top.clamp(min=1e-12)  # (B,)
                return scores.reshape(-1).index_add(0, cells, (values * scale[rows]).to(scores.dtype)).view(B, n_d)
            # popular history items support most of the domain: summing the pairs into a dense (B, n_d) c is
            # cheaper than sorting them into distinct cells
            c = torch.zeros(B * n_d, device=scores.device).index_add_(0, flat, sims).view(B, n_d)
        scale = scale / c.amax(1).clamp(min=1e-12)  # (B,); max_j c (c >= 0)
        return scores + (c * scale[:, None]).to(scores.dtype)


def _csr_entries(indptr: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Positions (in a CSR matrix's indices / values) of every entry of ``rows``, row after row, and the number of
    entries of each row."""
    start = indptr[rows]
    lens = indptr[rows + 1] - start
    first = torch.cumsum(lens, 0) - lens  # where each row's entries start in the flat list
    flat = torch.repeat_interleave(start - first, lens) + torch.arange(int(lens.sum()), device=rows.device)
    return flat, lens


def _sparse_rows_times(rows: Tensor, cols: Tensor, weights: Tensor, n_rows: int, table: Tensor) -> Tensor:
    """(n_rows, table columns): row r = sum of ``weights[k] * table[cols[k]]`` over the entries k with rows[k] = r."""
    w = torch.sparse_coo_tensor(torch.stack([rows, cols]), weights.float(), (n_rows, table.shape[0]), check_invariants=False)
    return torch.sparse.mm(w, table)


def _decayed(sims: Tensor, age: Tensor, decay: float) -> Tensor:
    """``sims * decay**age``; ``sims`` itself when decay is 1."""
    return sims if decay == 1.0 else sims * torch.pow(decay, age.float())


def _distinct_cells(pairs: Tensor, sims: Tensor) -> tuple[Tensor, Tensor]:
    """Flat cell positions with repeats and their values -> the distinct cells (sorted) and their sums."""
    cells, where = torch.unique(pairs, return_inverse=True)
    return cells, torch.zeros(cells.numel(), device=sims.device).index_add_(0, where, sims)


# ------------------------------------------------------------------------------------------------ persistence
def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel (``.module``) or torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        inner = inner if inner is not None else getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _strip_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def save(model: nn.Module, folder: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (wrapper prefixes such as DDP's ``module.`` stripped)."""
    from safetensors.torch import save_file

    inner = _unwrap(model)
    assert isinstance(inner, CrossDomainTransformer), f"expected a CrossDomainTransformer, got {type(inner).__name__}"
    state = {_strip_prefix(k): v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    assert set(state) == set(inner.state_dict()), "state_dict keys do not match the unwrapped model"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "model": type(inner).__name__})
    meta = {"model": type(inner).__name__, "config": dataclasses.asdict(inner.config)}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("saved %s (%d tensors) to %s", type(inner).__name__, len(state), folder)
    return folder


def load(folder: str | Path, *, device: str | torch.device = "cpu",
         text_model_path: str | Path | None = None) -> CrossDomainTransformer:
    """Rebuild the model written by :func:`save`; returned on ``device`` in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    assert meta.get("model") == "CrossDomainTransformer", f"{folder / CONFIG_FILE} is not a CrossDomainTransformer config"
    config = ModelConfig.from_dict(meta["config"])
    t = load_file(str(folder / WEIGHTS_FILE), device="cpu")
    offsets = t["domain_offsets"].tolist()
    flat = t["domain_items_flat"]
    features = ItemFeatures(
        text_emb=t.get("item_encoder.text_emb"),
        item_domain=t["item_encoder.item_domain"],
        item_attr=t["item_encoder.item_attr"],
        domain_items=[flat[offsets[k] : offsets[k + 1]] for k in range(len(offsets) - 1)],
        text_tokens=t.get("item_encoder.text_tokens"),
        text_mask=t.get("item_encoder.text_mask"),
        sample_weight=t["sample_weight"],
    )
    model = CrossDomainTransformer(config, features, text_model_path=text_model_path, pretrained_text=False)
    if "cooc_indptr" in t:
        t.setdefault("cooc_decay", torch.ones_like(t["cooc_weight"]))  # artifacts from before the decay: none
        t.setdefault("cooc_popularity", torch.zeros(config.n_items + 1))  # ... from before the cold-user term: off
        t.setdefault("cooc_cold_weight", torch.zeros_like(t["cooc_weight"]))
        model.set_cooccurrence(t["cooc_indptr"], t["cooc_indices"], t["cooc_values"], t["cooc_weight"], t["cooc_decay"],
                               t["cooc_popularity"], t["cooc_cold_weight"])
    if "text_sim_weight" in t:
        t.setdefault("text_sim_cold_weight", torch.zeros_like(t["text_sim_weight"]))  # from before the cold-user term
        t.setdefault("text_sim_cold_decay", torch.ones_like(t["text_sim_weight"]))
        model.set_text_similarity(t["text_sim_weight"], t["text_sim_decay"], t["text_sim_cold_weight"],
                                  t["text_sim_cold_decay"])
    if "trans_weight" in t:
        model.set_transitions(t["trans_indptr"], t["trans_indices"], t["trans_values"], t["trans_weight"])
    model.load_state_dict(t, strict=True)
    return model.to(device).eval()


__all__ = ["DomainHead", "CrossDomainTransformer", "time_gap_buckets", "save", "load", "N_TIME_BUCKETS"]
