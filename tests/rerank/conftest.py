"""Builders shared by the score-term tests: a tiny model over two domains with random same-domain item-item matrices
(``tiny``); the two-domain lake the fit tests write row by row (``two_domains``) is in tests/conftest.py."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
import scipy.sparse as scipy_sparse  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from crossrec.model.config import ModelConfig  # noqa: E402
from crossrec.model.encoder import ItemFeatures  # noqa: E402
from crossrec.model.transformer import CrossDomainTransformer  # noqa: E402
from crossrec.rerank.base import Catalog  # noqa: E402

T0 = 1_600_000_000
# the tiny catalog's entity ids per item (0 = none): entity 1 on items of both domains, item 3 has two
ENTITIES = [[0, 0], [1, 0], [1, 2], [0, 0], [3, 0], [2, 0], [1, 0], [3, 2], [0, 0], [2, 0]]
# the tiny catalog's (domain, category) ids per item (0 = none): items 1..5 in categories 1, 1, 2, -, 3; 6..9 in 4, 4, 5, -
CATEGORIES = [0, 1, 1, 2, 0, 3, 4, 4, 5, 0]


@pytest.fixture()
def tiny():
    """Items 1..5 in domain 0, 6..9 in domain 1 (random text vectors, not unit length; ``ENTITIES``, ``CATEGORIES``); an
    untrained model on them.

    ``batch(seqs, T)``: right-padded histories as the model reads them; ``pairs(seed)``: a random same-domain matrix as
    ``(dense (n+1, n+1), {"indptr", "indices", "values"})``; ``catalog()``: the catalog of the model.
    """
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    dom = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    n = dom.numel() - 1
    text = torch.cat([torch.zeros(1, 8), F.normalize(torch.randn(n, 8, generator=g), dim=-1)])
    text[1:] *= torch.linspace(0.5, 3.0, n)[:, None]  # not unit length: the text terms use cosines
    ids = torch.arange(n + 1)
    feats = ItemFeatures(text_emb=text, item_domain=dom, item_attr=torch.tensor(CATEGORIES),
                         domain_items=[ids[(dom == k) & (ids > 0)] for k in (0, 1)],
                         item_entities=torch.tensor(ENTITIES))
    torch.manual_seed(0)
    model = CrossDomainTransformer(ModelConfig(n_items=n, n_domains=2, text_dim=8, d_model=16, n_layers=2, n_heads=2,
                                               dropout=0.0, max_seq_len=8, n_entities=3,
                                               n_attr_values=max(CATEGORIES)), feats).eval()

    def batch(seqs: list[list[int]], T: int) -> dict:
        item = torch.zeros(len(seqs), T, dtype=torch.long)
        for b, s in enumerate(seqs):
            item[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        return {"item_idx": item, "domain_idx": dom[item], "event_ts": T0 + 3600 * torch.arange(T).repeat(len(seqs), 1)}

    def pairs(seed: int = 0, density: float = 0.5):
        gen = torch.Generator().manual_seed(seed)
        dense = torch.rand(n + 1, n + 1, generator=gen) * (torch.rand(n + 1, n + 1, generator=gen) < density)
        dense = dense * (dom[:, None] == dom[None, :])
        dense[0] = 0
        dense[:, 0] = 0
        dense.fill_diagonal_(0)
        csr = scipy_sparse.csr_matrix(dense.numpy())
        return dense, {"indptr": torch.from_numpy(csr.indptr).long(), "indices": torch.from_numpy(csr.indices),
                       "values": torch.from_numpy(csr.data)}

    return SimpleNamespace(dom=dom, text=text, unit=F.normalize(text, dim=1), model=model, batch=batch, pairs=pairs,
                           catalog=lambda: Catalog.from_model(model))
