"""Score terms: small components added to the Transformer's scores after training, and the set of them an artifact keeps.

For the items ``j`` of one domain ``d`` a :class:`TermSet` turns the Transformer's scores ``s(u, .)`` (B, n_d) into::

    score(u, j) = s(u, j) + std_j(s(u, .)) * sum_t w_{t,d} * f_t(u, j)

with ``f_t`` a term's values (:meth:`ScoreTerm.features`) and ``w_{t,d}`` its weight in ``d``, chosen with its other
parameters on the validation split (:func:`crossrec.rerank.fit.fit_terms`). Per user this ranks as the standardised
Transformer scores plus the weighted terms, so a weight does not depend on the model's score range. A *warm* term
changes only the rows whose history (the model's input window) has events of ``d``; a *cold* term only the rows
whose history has events, none of them in ``d`` (users new to the domain). Terms are added in their ``order``, the
order the fit chooses them in; a domain where every weight is 0 keeps exactly the Transformer's scores.

A term is a :class:`ScoreTerm` subclass in a module of ``crossrec.rerank``: defining it registers it by name, and
importing the package imports every module in it, so a new term is one new file there.

A *collaborative* term (co-occurrence, category, next item, popularity) knows an item only from its training events, so an
item without any (a new release) would get 0 and sink under every item the term lifts. A term set therefore keeps a
*stand-in* per item (:func:`stand_ins`): the item itself, or for an item without training events the item of its
domain with training events nearest in the model's item representation (text, entities, vectors). In a domain with
stand-in weight ``b_d`` a collaborative term's value of such an item is ``b_d`` times its stand-in's plus ``1 - b_d``
times its own (``b_d`` chosen on validation by :func:`crossrec.rerank.fit.fit_terms`; 0 = its own values only).

Files (in an artifact folder, next to the model): ``terms.json`` (the terms in order with their constructor options,
the parameters per domain by domain *name*, the fit's report), ``terms/<name>.safetensors`` (each term's fitted
state) and ``terms/_stand_in.safetensors`` (the stand-ins, when the set has them). No pickle.
"""
from __future__ import annotations

import abc
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from crossrec.rerank.sparse import domain_events

if TYPE_CHECKING:
    from crossrec.model.baselines import InteractionData
    from crossrec.model.transformer import CrossDomainTransformer

log = logging.getLogger(__name__)

KINDS = ("warm", "cold")  # the rows a term changes: with history in the domain / with history, none in the domain
DECAY_GRID: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4)  # recency decays the fit tries (1.0 = every event counts alike)
# TermSet.prepare: the most memory the terms' dense (n_d, n_d) item-item tables may take, all domains and terms
# together; a domain whose tables do not fit keeps the terms' sparse paths
TERM_TABLE_BYTES = 256 * 2**20
TERMS_FILE = "terms.json"
TERMS_DIR = "terms"
STAND_IN_FILE = "_stand_in.safetensors"  # in TERMS_DIR (no term name starts with "_")
STAND_IN_CHUNK = 4096  # items without training events compared with their domain's trained items at a time

_REGISTRY: dict[str, type["ScoreTerm"]] = {}


@dataclass(frozen=True, eq=False)
class Catalog:
    """The item side a term reads, indexed by global ``item_idx`` (row 0 = padding), on the model's device.

    Attributes:
        item_domain: (n_items+1,) long, ``domain_idx`` of each item.
        domain_items: per domain, the (n_d,) long global ids of its items in ``domain_item_idx`` order (column j of
            a domain's scores is item ``domain_items[d][j]``).
        item_col: (n_items+1,) long, ``domain_item_idx`` of each item (-1 for the padding id).
        text_units: (n_items+1, text_dim) the frozen text embeddings scaled to unit length (a zero vector stays 0);
            None when the model has no frozen text table (``--no-text`` or a fine-tuned text encoder).
        item_entities: (n_items+1, E) long, each item's attribute entity ids (0 = none); None when the model has
            no entity table.
        item_attr: (n_items+1,) long, each item's (domain, category) id (0 = none); None when the model has no
            category embedding.
    """

    item_domain: Tensor
    domain_items: list[Tensor]
    item_col: Tensor
    text_units: Tensor | None
    item_entities: Tensor | None = None
    item_attr: Tensor | None = None
    _domain_units: dict[int, Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        n = self.item_domain.shape[0]
        assert self.item_col.shape == (n,), f"item_col must be ({n},), got {tuple(self.item_col.shape)}"
        assert self.text_units is None or self.text_units.shape[0] == n, f"text_units must have {n} rows"
        assert self.item_entities is None or self.item_entities.shape[0] == n, f"item_entities must have {n} rows"
        assert self.item_attr is None or self.item_attr.shape == (n,), f"item_attr must be ({n},)"

    @classmethod
    def from_model(cls, model: "CrossDomainTransformer") -> "Catalog":
        enc = model.item_encoder
        text = getattr(enc, "text_emb", None)  # absent without text or with a fine-tuned text encoder
        return cls(item_domain=enc.item_domain, domain_items=[model.domain_items(d) for d in range(model.config.n_domains)],
                   item_col=model.domain_item_idx, text_units=None if text is None else F.normalize(text.float(), dim=1),
                   item_entities=enc.item_entities if enc.entity_emb is not None else None,
                   item_attr=enc.item_attr if enc.attr_emb is not None else None)

    @property
    def n_items(self) -> int:
        return self.item_domain.shape[0] - 1

    @property
    def n_domains(self) -> int:
        return len(self.domain_items)

    @property
    def device(self) -> torch.device:
        return self.item_domain.device

    def domain_size(self, domain: int) -> int:
        return self.domain_items[int(domain)].numel()

    def domain_text_units(self, domain: int) -> Tensor:
        """(n_d, text_dim) the unit text vectors of ``domain``'s items in domain_item_idx order (gathered once)."""
        assert self.text_units is not None, "the catalog has no frozen text table"
        d = int(domain)
        if d not in self._domain_units:
            self._domain_units[d] = self.text_units[self.domain_items[d]]
        return self._domain_units[d]


class ScoreTerm(abc.ABC):
    """One optional score term: its fitted state, its values ``f(u, j)``, and the grid the fit searches.

    A subclass declares ``name`` (registry key and the file name of its state), ``applies_to`` (``"warm"`` or
    ``"cold"``, see :mod:`crossrec.rerank.base`), ``order`` (the fit adds terms in increasing order), ``weights``
    (the weight grid; 0 = off) and optionally ``params`` (grids of its other parameters, e.g. a recency decay) with
    ``neutral`` (each one's value while the weight is 0; on equal validation NDCG the fit prefers the smaller weight,
    then the parameters nearest their neutral value), and ``collaborative`` (True when its values come from training
    events alone: an item without any takes its stand-in's, see :mod:`crossrec.rerank.base`). Constructor keyword
    arguments are the term's options (:meth:`options`, saved with it). Defining the subclass registers it.
    """

    name: ClassVar[str]
    applies_to: ClassVar[str]
    order: ClassVar[int]
    weights: ClassVar[tuple[float, ...]]
    params: ClassVar[Mapping[str, tuple[float, ...]]] = {}
    neutral: ClassVar[Mapping[str, float]] = {}
    collaborative: ClassVar[bool] = False

    catalog: Catalog  # set by fit / load_state_dict

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for attr in ("name", "applies_to", "order", "weights"):
            assert hasattr(cls, attr), f"score term {cls.__qualname__} must declare {attr!r}"
        assert cls.applies_to in KINDS, f"{cls.name}: applies_to must be one of {KINDS}, got {cls.applies_to!r}"
        assert all(w >= 0 for w in cls.weights), f"{cls.name}: weights must be >= 0, got {cls.weights}"
        assert set(cls.neutral) == set(cls.params), f"{cls.name}: give a neutral value for each of {sorted(cls.params)}"
        assert "weight" not in cls.params, f"{cls.name}: 'weight' is not one of params"
        prev = _REGISTRY.get(cls.name)
        assert prev is None or (prev.__module__, prev.__qualname__) == (cls.__module__, cls.__qualname__), (
            f"score term name {cls.name!r} is taken by {prev.__module__}.{prev.__qualname__}")
        _REGISTRY[cls.name] = cls

    def options(self) -> dict:
        """The constructor keyword arguments of this term (saved in terms.json, passed back at load)."""
        return {}

    def unusable(self, catalog: Catalog) -> str | None:
        """Why this term cannot score ``catalog``'s model (the fit leaves it out); None when it can."""
        return None

    @abc.abstractmethod
    def fit(self, events: "InteractionData", catalog: Catalog) -> None:
        """Build the term's state from training ``events`` (and bind it to ``catalog``)."""

    @abc.abstractmethod
    def features(self, item_idx: Tensor, domain: int, **params: float) -> Tensor:
        """(B, T) right-padded histories -> (B, n_d) unweighted values ``f(u, j)`` of ``domain``'s items, at one
        setting of the term's non-weight ``params``."""

    def add_to(self, out: Tensor, item_idx: Tensor, domain: int, scale: Tensor, **params: float) -> None:
        """``out += scale[:, None] * features(item_idx, domain, **params)``, in place: ``out`` (B, n_d), ``scale``
        (B,). A term overrides it where the sum can go straight into ``out`` without a (B, n_d) tensor of its
        values (a sparse product accumulated into the scores): every such tensor is a pass over memory."""
        out.addcmul_(self.features(item_idx, domain, **params), scale[:, None])

    def state_dict(self) -> dict[str, Tensor]:
        """The fitted state as tensors (saved as ``terms/<name>.safetensors``)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor], catalog: Catalog) -> None:
        """Restore :meth:`state_dict` and bind the term to ``catalog``."""
        assert not state, f"{self.name} has no state, got {sorted(state)}"
        self.catalog = catalog

    def table_bytes(self, domain: int) -> int:
        """Bytes of the dense item-item table :meth:`build_table` makes for ``domain``; 0 = the term has none."""
        return 0

    def build_table(self, domain: int) -> None:
        """Precompute ``domain``'s dense table (same values as the sparse path, up to float rounding)."""

    @classmethod
    def settings(cls, grid: Mapping[str, Sequence[float]] | None = None) -> list[dict[str, float]]:
        """Every setting the fit tries, in order: weight 0 once (parameters neutral), every other weight with every
        combination of the parameter grids. ``grid``: replaces some of the grids (``{"weight": (0.0, 1.0)}``)."""
        grid = {"weight": cls.weights, **cls.params, **(grid or {})}
        unknown = set(grid) - {"weight", *cls.params}
        assert not unknown, f"{cls.name} has no parameter {sorted(unknown)}"
        assert len(grid["weight"]) >= 1 and all(w >= 0 for w in grid["weight"]), f"weights must be >= 0: {grid['weight']}"
        out = []
        for w in grid["weight"]:
            if w == 0:  # the other parameters do not matter while the term is off
                out.append(cls.off())
                continue
            for combo in itertools.product(*(grid[p] for p in cls.params)):
                out.append({"weight": float(w), **{p: float(v) for p, v in zip(cls.params, combo)}})
        return out

    @classmethod
    def preference(cls, setting: Mapping[str, float]) -> tuple[float, ...]:
        """Tie-break key (larger wins): the smaller weight, then parameters nearer their neutral values."""
        return (-setting["weight"], *(-abs(setting[p] - cls.neutral[p]) for p in cls.params))

    @classmethod
    def off(cls) -> dict[str, float]:
        """The setting of a term that is off: weight 0, parameters neutral."""
        return {"weight": 0.0, **{p: float(cls.neutral[p]) for p in cls.params}}


def registered() -> dict[str, type[ScoreTerm]]:
    """Every registered term class by name, in fit order."""
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


def score_std(h: Tensor, item_cov: Tensor) -> Tensor:
    """(B, D) user vectors, the domain's :func:`crossrec.inference.score_covariance` -- (D, D), or (D + 1, D + 1) with
    the item biases last -> (B,) standard deviation of each user's scores ``h @ item_reps.T [+ bias]`` over the
    domain's items, without a pass over the (B, n_d) scores."""
    h = h.float()
    if item_cov.shape[0] == h.shape[1] + 1:
        h = torch.cat([h, h.new_ones(h.shape[0], 1)], 1)  # (B, D + 1)
    return torch.einsum("bd,de,be->b", h, item_cov, h).clamp(min=0).sqrt()


def term_rows(item_idx: Tensor, item_domain: Tensor, domain: int, kind: str) -> Tensor | None:
    """The rows of a batch of (B, T) histories that a term of ``kind`` changes in ``domain``: None = every row."""
    in_d = domain_events(item_idx, item_domain, domain).any(1)  # (B,)
    rows = in_d if kind == "warm" else (item_idx[:, 0] != 0) & ~in_d  # right-padded: events iff position 0 holds one
    return None if bool(rows.all()) else rows.nonzero().squeeze(1)


def add_term(scores: Tensor, features: Tensor, scale: Tensor, rows: Tensor | None, inplace: bool = False) -> Tensor:
    """``scores + scale[:, None] * features`` on ``rows`` (None = every row; ``features`` and ``scale`` then hold
    those rows only); ``inplace``: added into ``scores`` itself."""
    if rows is None:
        return scores.addcmul_(features, scale[:, None]) if inplace else torch.addcmul(scores, features, scale[:, None])
    add = (scale[:, None] * features).to(scores.dtype)
    return scores.index_add_(0, rows, add) if inplace else scores.index_add(0, rows, add)


def stand_ins(item_table: Tensor, catalog: Catalog, counts: Tensor) -> Tensor:
    """(n_items+1,) each item's stand-in for the collaborative terms: itself when it has training events (``counts``
    (n_items+1,) > 0), else the item of its domain with training events whose representation (``item_table`` (n_items+1,
    D), the model's) is nearest in cosine; itself when its domain has no trained item."""
    out = torch.arange(catalog.n_items + 1, device=catalog.device)
    units = F.normalize(item_table.float().to(catalog.device), dim=1)
    trained = counts.to(catalog.device) > 0
    for items in catalog.domain_items:
        have, cold = items[trained[items]], items[~trained[items]]
        if have.numel() == 0:
            continue
        for s in range(0, cold.numel(), STAND_IN_CHUNK):
            part = cold[s:s + STAND_IN_CHUNK]
            out[part] = have[(units[part] @ units[have].T).argmax(1)]
    return out


class TermSet:
    """The fitted terms of an artifact in fit order, with their parameters per domain.

    ``params[name][domain_idx] = {"weight": w, <param>: v, ...}``; a domain missing there has the term off.
    ``domains``: the domain names in domain_idx order (terms.json keys the parameters by name); ``report``: what the
    fit measured (:func:`crossrec.rerank.fit.fit_terms`), kept in terms.json; ``stand_in``: (n_items+1,) item ids
    (:func:`stand_ins`), None = every item stands for itself; ``stand_in_weight``: ``b_d`` per domain_idx (a domain
    missing there: 1).
    """

    def __init__(self, terms: Sequence[ScoreTerm], params: Mapping[str, Mapping[int, Mapping[str, float]]],
                 domains: Sequence[str], report: Mapping | None = None, stand_in: Tensor | None = None,
                 stand_in_weight: Mapping[int, float] | None = None):
        self.terms = sorted(terms, key=lambda t: (t.order, t.name))
        names = [t.name for t in self.terms]
        assert len(set(names)) == len(names), f"a term occurs twice: {names}"
        unknown = set(params) - set(names)
        assert not unknown, f"parameters of terms not in the set: {sorted(unknown)}"
        self.domains = list(domains)
        self.params: dict[str, dict[int, dict[str, float]]] = {}
        for t in self.terms:
            self.params[t.name] = {}
            for d, p in params.get(t.name, {}).items():
                assert 0 <= int(d) < len(self.domains), f"{t.name}: domain {d} not in 0..{len(self.domains) - 1}"
                assert set(p) == {"weight", *t.params}, f"{t.name}: parameters must be weight + {sorted(t.params)}, got {sorted(p)}"
                assert p["weight"] >= 0, f"{t.name}: weights must be >= 0, got {p['weight']}"
                self.params[t.name][int(d)] = {k: float(v) for k, v in p.items()}
        self.report = dict(report or {})
        self.stand_in = stand_in
        self.stand_in_weight = {int(d): float(w) for d, w in (stand_in_weight or {}).items()}
        assert all(0.0 <= w <= 1.0 for w in self.stand_in_weight.values()), f"stand-in weights in [0, 1]: {stand_in_weight}"
        self._stand_in_cols: dict[int, tuple[Tensor, Tensor] | None] = {}  # per domain: (columns, their stand-ins')

    def active(self, domain: int) -> list[tuple[ScoreTerm, dict[str, float]]]:
        """The terms that change ``domain``'s scores (weight above 0 there), in order, with their parameters."""
        return [(t, self.params[t.name][int(domain)]) for t in self.terms
                if self.params[t.name].get(int(domain), {}).get("weight", 0.0) != 0.0]

    def values(self, term: ScoreTerm, item_idx: Tensor, domain: int, params: Mapping[str, float]) -> Tensor:
        """``term``'s values (B, n_d) of ``domain`` for the (B, T) histories at ``params`` (its weight aside); a
        collaborative term's column of an item without training events is its stand-in's."""
        f = term.features(item_idx, domain, **{k: v for k, v in params.items() if k != "weight"})
        cols = self.stand_in_columns(term.catalog, domain) if term.collaborative else None
        b = self.stand_in_weight.get(int(domain), 1.0)
        if cols is None or b == 0.0:
            return f
        own, theirs = cols
        f = f.clone()  # may be a broadcast view
        f[:, own] = b * f[:, theirs] + (1.0 - b) * f[:, own]
        return f

    def _adds_itself(self, term: ScoreTerm, domain: int) -> bool:
        """Whether :meth:`apply` lets ``term`` add itself into the scores (:meth:`ScoreTerm.add_to`): a warm term (its
        values are added to every row, at scale 0 outside its rows) whose values take no stand-in columns in ``domain``
        (those are mixed in :meth:`values`)."""
        mixed = (term.collaborative and self.stand_in_columns(term.catalog, domain) is not None
                 and self.stand_in_weight.get(int(domain), 1.0) != 0.0)
        return term.applies_to == "warm" and not mixed

    def stand_in_columns(self, catalog: Catalog, domain: int) -> tuple[Tensor, Tensor] | None:
        """The columns of ``domain``'s items that have a stand-in and their stand-ins' columns; None when none has."""
        d = int(domain)
        if d not in self._stand_in_cols:
            cols = None
            if self.stand_in is not None:
                items = catalog.domain_items[d]
                mapped = self.stand_in.to(items.device)[items]
                moved = (mapped != items).nonzero().squeeze(1)
                cols = (moved, catalog.item_col[mapped[moved]]) if moved.numel() else None
            self._stand_in_cols[d] = cols
        return self._stand_in_cols[d]

    @torch.no_grad()
    def prepare(self, max_bytes: int = TERM_TABLE_BYTES) -> list[int]:
        """Build the dense item-item tables of the active terms for every domain whose tables fit ``max_bytes`` (all
        domains and terms together, smallest domains first); scores stay the same up to float rounding. Returns the
        domains that got tables."""
        if not self.terms:
            return []
        catalog = self.terms[0].catalog
        used, done = 0, []
        for d in sorted(range(catalog.n_domains), key=catalog.domain_size):
            need = {t: t.table_bytes(d) for t, _ in self.active(d)}
            need = {t: b for t, b in need.items() if b}
            if not need or used + sum(need.values()) > max_bytes:
                continue
            used += sum(need.values())
            for t in need:
                t.build_table(d)
            done.append(d)
        if done:
            log.info("score-term tables for domains %s: %.0f MiB", done, used / 2**20)
        return done

    def apply(self, scores: Tensor, item_idx: Tensor, domain: int, h: Tensor, item_cov: Tensor,
              inplace: bool = False) -> Tensor:
        """The Transformer's scores (B, n_d) of ``domain`` plus the active terms (see the module docstring).

        ``item_idx``: (B, T) the histories the scores were computed from; ``h``: (B, D) the user vectors of the
        domain (``scores = h @ item_reps.T`` plus the item biases); ``item_cov``: their
        :func:`~crossrec.inference.score_covariance` (the standard deviation of each row comes from it). Unchanged
        (the same tensor) when no term is active in ``domain``; ``inplace``: add into ``scores`` itself (a caller that
        owns them) instead of a new tensor.

        A term that can (:meth:`_adds_itself`) adds itself into the scores without a tensor of its values; the others
        go through :meth:`values` on their rows.
        """
        active = self.active(domain)
        if not active:
            return scores
        std = score_std(h, item_cov)  # (B,)
        item_domain = active[0][0].catalog.item_domain
        rows: dict[str, Tensor | None] = {}
        out, owned = scores, inplace
        for term, p in active:
            if term.applies_to not in rows:
                rows[term.applies_to] = term_rows(item_idx, item_domain, domain, term.applies_to)
            r = rows[term.applies_to]
            if r is not None and r.numel() == 0:
                continue
            if not self._adds_itself(term, domain):
                f = self.values(term, item_idx if r is None else item_idx[r], domain, p)
                out, owned = add_term(out, f, p["weight"] * (std if r is None else std[r]), r, inplace=owned), True
                continue
            if not owned:
                out, owned = out.clone(), True
            scale = p["weight"] * std
            if r is not None:
                scale = torch.zeros_like(std).index_copy_(0, r, scale[r])
            term.add_to(out, item_idx, domain, scale.float(), **{k: v for k, v in p.items() if k != "weight"})
        return out

    def save(self, folder: str | Path) -> None:
        """Write ``terms.json`` and ``terms/<name>.safetensors`` into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        (folder / TERMS_DIR).mkdir(parents=True, exist_ok=True)
        for t in self.terms:
            state = {k: v.detach().cpu().contiguous() for k, v in t.state_dict().items()}
            save_file(state, str(folder / TERMS_DIR / f"{t.name}.safetensors"), metadata={"format": "pt", "term": t.name})
        meta = {"terms": [{"name": t.name, "options": t.options()} for t in self.terms],
                "domains": self.domains,
                "params": {t.name: {self.domains[d]: p for d, p in sorted(self.params[t.name].items())} for t in self.terms},
                "stand_in_weight": {self.domains[d]: w for d, w in sorted(self.stand_in_weight.items())},
                "report": self.report}
        if self.stand_in is not None:
            save_file({"stand_in": self.stand_in.detach().cpu().contiguous()}, str(folder / TERMS_DIR / STAND_IN_FILE))
        (folder / TERMS_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path, catalog: Catalog) -> "TermSet":
        """Read what :meth:`save` wrote; the terms' state goes to ``catalog``'s device. A parameter a term gained after
        the artifact was saved takes its neutral value (the term as it scored then)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / TERMS_FILE).read_text(encoding="utf-8"))
        domains = meta["domains"]
        assert len(domains) == catalog.n_domains, f"{folder / TERMS_FILE} has {len(domains)} domains, the model {catalog.n_domains}"
        kinds = registered()
        terms = []
        for entry in meta["terms"]:
            kind = kinds.get(entry["name"])
            assert kind is not None, (f"{folder / TERMS_FILE} holds the term {entry['name']!r}, which no module of "
                                      f"crossrec.rerank defines (known: {sorted(kinds)})")
            term = kind(**entry["options"])
            term.load_state_dict(load_file(str(folder / TERMS_DIR / f"{term.name}.safetensors"), device=str(catalog.device)),
                                 catalog)
            terms.append(term)
        index = {name: d for d, name in enumerate(domains)}
        neutral = {t.name: t.neutral for t in terms}
        params = {name: {index[d]: {**neutral.get(name, {}), **p} for d, p in by_domain.items()}
                  for name, by_domain in meta["params"].items()}
        stand_in_file = folder / TERMS_DIR / STAND_IN_FILE
        stand_in = load_file(str(stand_in_file), device=str(catalog.device))["stand_in"] if stand_in_file.is_file() else None
        weights = {index[d]: w for d, w in meta.get("stand_in_weight", {}).items()}
        return cls(terms, params, domains, meta.get("report"), stand_in, weights)


__all__ = ["ScoreTerm", "TermSet", "Catalog", "registered", "stand_ins", "score_std", "term_rows", "add_term",
           "DECAY_GRID", "KINDS", "TERM_TABLE_BYTES", "TERMS_FILE", "TERMS_DIR", "STAND_IN_FILE"]
