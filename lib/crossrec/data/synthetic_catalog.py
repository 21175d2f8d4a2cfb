"""The synthetic data's catalog side: theme vocabulary, each domain's raw layout, and the items of a domain.

A topic is named after a theme (12 hand-made ones, more made up procedurally); a domain's items of a topic take their
titles, texts, category and attributes from that theme (see :mod:`crossrec.data.synthetic` for the planted signal).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from crossrec.data.synthetic import SyntheticSpec

DOMAIN_NAMES = ("books", "movies", "music", "games", "podcasts", "recipes", "apparel", "toys")
FORMATS = ("csv", "jsonl", "parquet")
BAD_REASONS = (
    "missing_user_id",
    "unparseable_timestamp",
    "timestamp_out_of_range",
    "item_not_in_catalog",
    "duplicate",
    "malformed_line",  # csv domains only
)
ZIPF_S = 1.05  # item popularity within (domain, topic)


# ----------------------------------------------------------------------------------------------------
# Vocabulary: 12 hand-made themes, more made up procedurally.


@dataclass(frozen=True)
class Theme:
    key: str
    words: tuple[str, ...]
    books: str  # category name per domain
    movies: str
    music: str
    generic: str


THEMES = (  # key, words, then the category name in books, movies, music, other domains
    Theme("space", ("Galaxy", "Orbit", "Nebula", "Comet", "Rocket", "Starlight", "Eclipse", "Asteroid"), "Science Fiction", "Space Adventure", "Space Rock", "Space"),
    Theme("jazz", ("Saxophone", "Swing", "Bebop", "Trumpet", "Blue Note", "Speakeasy", "Improvisation", "Ragtime"), "Music History", "Jazz Drama", "Jazz", "Jazz"),
    Theme("baking", ("Sourdough", "Pastry", "Croissant", "Oven", "Butter", "Crumb", "Brioche", "Meringue"), "Cookbooks", "Food Documentary", "Kitchen Beats", "Baking"),
    Theme("ocean", ("Tide", "Reef", "Harbor", "Coral", "Voyage", "Lighthouse", "Anchor", "Mariner"), "Sea Adventures", "Nautical", "Sea Shanties", "Ocean"),
    Theme("mystery", ("Detective", "Alibi", "Clue", "Cipher", "Suspect", "Fingerprint", "Inspector", "Riddle"), "Crime & Mystery", "Whodunit", "Noir Soundtracks", "Mystery"),
    Theme("mountains", ("Summit", "Glacier", "Ridge", "Trail", "Alpine", "Avalanche", "Basecamp", "Sherpa"), "Outdoor Adventure", "Mountain Film", "Folk", "Outdoors"),
    Theme("medieval", ("Knight", "Castle", "Dragon", "Sword", "Crown", "Kingdom", "Wizard", "Legend"), "Epic Fantasy", "Fantasy", "Symphonic Metal", "Fantasy"),
    Theme("gardening", ("Rose", "Orchard", "Seedling", "Blossom", "Meadow", "Greenhouse", "Tulip", "Compost"), "Home & Garden", "Nature Documentary", "Ambient", "Garden"),
    Theme("robots", ("Robot", "Circuit", "Android", "Algorithm", "Cyborg", "Quantum", "Neon", "Mainframe"), "Cyberpunk", "Tech Thriller", "Synthwave", "Tech"),
    Theme("football", ("Goal", "Stadium", "Striker", "Derby", "Champion", "Kickoff", "Penalty", "Trophy"), "Sports", "Sports Drama", "Stadium Anthems", "Sports"),
    Theme("wildwest", ("Cowboy", "Frontier", "Saloon", "Outlaw", "Canyon", "Rodeo", "Sheriff", "Mustang"), "Westerns", "Western", "Country", "Western"),
    Theme("romance", ("Heart", "Kiss", "Wedding", "Paris", "Moonlight", "Serenade", "Valentine", "Promise"), "Romance", "Romantic Comedy", "Love Songs", "Romance"),
)
_SYLLABLES = ("ka", "lo", "mir", "ve", "tan", "zor", "qui", "ra", "nel", "dus", "fen", "ob", "su", "thi",
              "gar", "wen", "yl", "pra", "cor", "mek")


def theme_of(topic: int) -> Theme:
    """The hand-made theme of ``topic``, or for topics past them a made-up one with invented words."""
    if topic < len(THEMES):
        return THEMES[topic]
    rng = np.random.default_rng(np.random.SeedSequence([0x7E3A, topic]))  # independent of the spec's seed
    words: list[str] = []
    while len(words) < 8:
        word = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()
        if word not in words:
            words.append(f"{word}{topic}")  # the topic number keeps words of different topics apart
    head = words[0]
    return Theme(f"topic{topic}", tuple(words), f"{head} Fiction", f"{head} Cinema", f"{head} Sound", head)


def category_name(theme: Theme, domain: str) -> str:
    if domain in ("books", "movies", "music"):
        return getattr(theme, domain)
    return f"{theme.generic} {domain.title()}"


def domain_name(index: int) -> str:
    """Name of the domain at ``index``: ``DOMAIN_NAMES`` in order, then ``domain8``, ``domain9``, ..."""
    return DOMAIN_NAMES[index] if index < len(DOMAIN_NAMES) else f"domain{index}"


# ----------------------------------------------------------------------------------------------------
# Layout of each domain in the raw format.


@dataclass(frozen=True)
class Layout:
    name: str
    kind: str  # books | movies | music | generic: decides ids, titles and item attributes
    fmt: str  # csv | jsonl | parquet
    timestamp: str  # dataset.json "timestamp"
    columns: dict[str, str]  # canonical -> raw interaction column
    weight: str | None  # stars | half_stars | quantity | None (no weight column)
    other_type: int  # event type code of non-view events
    item_columns: dict[str, str]  # canonical -> raw item column
    text_columns: tuple[str, ...]
    attribute_columns: tuple[str, ...]
    local_users: bool  # users named by an identity map

    @property
    def ext(self) -> str:
        return self.fmt

    @property
    def reasons(self) -> tuple[str, ...]:
        return BAD_REASONS if self.fmt == "csv" else BAD_REASONS[:-1]


def domain_layout(index: int) -> Layout:
    name = domain_name(index)
    if index == 0:
        return Layout(name, "books", "csv", "iso8601",
                       {"user_id": "reader", "item_id": "isbn", "event_ts": "read_at", "event_type": "action",
                        "weight": "stars"}, "stars", 1,
                       {"item_id": "isbn", "title": "title", "category": "genre"},
                       ("title", "blurb"), ("author", "publisher"), False)
    if index == 1:
        return Layout(name, "movies", "jsonl", "epoch_s",
                       {"user_id": "uid", "item_id": "movie_id", "event_ts": "ts", "event_type": "event",
                        "weight": "rating"}, "half_stars", 1,
                       {"item_id": "movie_id", "title": "name", "category": "genre"},
                       ("name", "plot"), ("director", "year"), False)
    if index == 2:
        return Layout(name, "music", "parquet", "epoch_ms",
                       {"user_id": "listener", "item_id": "track", "event_ts": "played_at_ms", "event_type": "kind"},
                       None, 2,
                       {"item_id": "track", "title": "track_name", "category": "style"},
                       ("track_name",), ("artist", "label"), True)
    fmt = FORMATS[index % 3]
    timestamp = {"csv": "yyyy-MM-dd HH:mm:ss", "jsonl": "epoch_s", "parquet": "epoch_ms"}[fmt]
    simple = ("user_id", "item_id", "event_ts", "event_type", "weight")
    return Layout(name, "generic", fmt, timestamp, {c: c for c in simple}, "quantity", 2,
                   {"item_id": "item_id", "title": "title", "category": "category"},
                   ("title", "description"), ("brand",), False)


# ----------------------------------------------------------------------------------------------------
# Items.

_FIRST = ("Ada", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Lars",
          "Maya", "Nils", "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wen", "Yusuf")
_LAST = ("Abbott", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ivanova", "Jensen",
         "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov", "Quint", "Rossi", "Sato", "Tanaka")
_PUBLISHERS = ("Harbor House", "Lantern Press", "Northwind Books", "Quill & Ink", "Red Kite", "Silverleaf",
               "Tall Tree", "Vellum")
_LABELS = ("Blue Room Records", "Echo Park", "Frequency", "Groove Yard", "Night Owl", "Polar Sound", "Static",
           "Vinyl Vault")
_BRANDS = ("Acme", "Brightline", "Cobalt", "Driftwood", "Evergreen", "Foxglove", "Granite", "Helix", "Ironbark",
           "Juniper", "Kestrel", "Lumen")
_TITLES = {
    "books": ("The {a} Chronicle", "{a} and the {b}", "Tales of the {a}", "The Last {a}", "A {a} Story"),
    "movies": ("{a}: The Movie", "Return of the {a}", "{a} Rising", "The {a} Job", "{a} vs. {b}"),
    "music": ("{a} Sessions", "Songs of the {a}", "{a} & {b}", "{a} (Live)", "{a} Nights"),
    "games": ("{a} Simulator", "{a} Tactics", "{a} Arena", "Super {a}"),
    "podcasts": ("The {a} Podcast", "{a} Talk", "{a} Weekly"),
    "recipes": ("{a} Cookies", "{a} Stew", "Quick {a} Salad"),
    "apparel": ("{a} T-Shirt", "{a} Hoodie", "{a} Cap"),
    "toys": ("{a} Playset", "{a} Plush", "{a} Puzzle"),
}
_TEXTS = {
    "books": "A {cat} novel about {a}, {b} and the {c}.",
    "movies": "{Cat}. {A} meets {b}, and nothing is the same after the {c}.",
    "generic": "{Cat}: {a}, {b} and {c}.",
}
_SEQUEL = {"books": " Vol. {n}", "movies": " {n}", "music": " Vol. {n}"}


def make_item_id(kind: str, domain: str, idx: int) -> str:
    """Id of item ``idx`` (injective in ``idx``; indexes past the catalog give ids not in it)."""
    if kind == "books":  # ISBN-13 with a valid check digit
        body = f"978{(idx * 7919 + 12345) % 10**9:09d}"
        check = (10 - sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(body)) % 10) % 10
        return f"{body}{check}"
    if kind == "movies":
        return f"tt{(idx * 7919 + 12345) % 9_000_000 + 1_000_000}"
    if kind == "music":
        return f"trk-{(idx * 2_654_435_761 + 0x5BD1E995) % 2**32:08x}"
    return f"{domain}-{idx:06d}"


@dataclass(frozen=True)
class DomainCatalog:
    ids: list[str]
    columns: dict[str, list[Any]]  # raw item columns, in file order
    cdf: np.ndarray  # (N,) topic + within-topic popularity CDF, items grouped by topic
    cdf_items: np.ndarray  # (N,) item index at each cdf position
    topic_of: np.ndarray | None = None  # (N,) each item's topic
    creator: np.ndarray | None = None  # (N,) each item's creator slot in its topic (entity_signal="shared")
    n_creators: int = 4  # creator slots per topic
    new: np.ndarray | None = None  # (N,) bool: new releases (``new_items``), None = none
    twin: np.ndarray | None = None  # (N,) an old item of the same topic and creator for each new one (itself if old)

    def sample(self, topic: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Item index for each (topic, uniform in [0, 1)) pair, Zipf-like within the topic."""
        pos = np.searchsorted(self.cdf, topic + u, side="right")
        return self.cdf_items[np.minimum(pos, len(self.cdf_items) - 1)]

    def sample_creator(self, topic: np.ndarray, slot: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Item index for each (topic, creator slot, uniform) triple: uniform among that creator's items of the topic
        (``slot`` taken modulo :attr:`n_creators`); a topic whose creator has no item falls back to :meth:`sample`."""
        group = topic * self.n_creators + slot % self.n_creators
        key = self.topic_of * self.n_creators + self.creator
        order = np.argsort(key, kind="stable")
        start = np.searchsorted(key[order], group, side="left")
        count = np.searchsorted(key[order], group, side="right") - start
        pick = order[np.minimum(start + np.floor(u * count).astype(np.int64), len(order) - 1)]
        return np.where(count > 0, pick, self.sample(topic, u))



def new_item_twins(topic_of: np.ndarray, creator: np.ndarray, new: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(N,) for each item itself when it is old; when new, an old item of its topic and creator picked by ``u`` (N,
    uniform), of its topic when the creator has no old item, itself when the topic has none."""
    twin = np.arange(len(new))
    want = np.flatnonzero(new)
    for key in (topic_of * 1_000_000 + creator, topic_of):  # (topic, creator) first, then the topic
        old = np.flatnonzero(~new)
        order = old[np.argsort(key[old], kind="stable")]
        start = np.searchsorted(key[order], key[want], side="left")
        count = np.searchsorted(key[order], key[want], side="right") - start
        found = count > 0
        twin[want[found]] = order[start[found] + np.floor(u[want[found]] * count[found]).astype(np.int64)]
        want = want[~found]
    return twin


def topic_naming(spec: SyntheticSpec, index: int) -> np.ndarray:
    """(topics,) the theme that names each topic in domain ``index`` (see ``text_signal``)."""
    if spec.text_signal == "aligned":
        return np.arange(spec.topics)
    # a stream of its own: the aligned data set's bytes do not depend on it
    return np.random.default_rng(np.random.SeedSequence([spec.seed, 0x7E57, index])).permutation(spec.topics)


def shared_entities(spec: SyntheticSpec, topic: int) -> tuple[list[str], list[str]]:
    """Topic ``topic``'s 4 people and 2 brands when ``entity_signal='shared'``: one stream per (seed, topic), so every
    domain draws the same names (and the domains' own streams, hence the other bytes, do not change)."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0xE17, topic]))
    people = [f"{_FIRST[i]} {_LAST[j]}" for i, j in zip(rng.integers(0, len(_FIRST), 4), rng.integers(0, len(_LAST), 4))]
    brands = [f"{_BRANDS[i]} {_LAST[j]}" for i, j in zip(rng.integers(0, len(_BRANDS), 2), rng.integers(0, len(_LAST), 2))]
    return people, brands


def style_vectors(spec: SyntheticSpec, index: int, topic_of: np.ndarray, creator: np.ndarray, fmt: str) -> list:
    """Each item's ``style_vec`` (``vector_signal='creator'``): the code of its (topic, creator) -- one seeded stream,
    the same in every domain -- plus per-item noise of the domain's own stream; a JSON array's text in a CSV cell."""
    from crossrec.data.synthetic import VECTOR_DIM, VECTOR_NOISE

    codes = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x5EC7])).normal(size=(spec.topics, 4, VECTOR_DIM))
    noise = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x5EC7, index])).normal(size=(len(topic_of), VECTOR_DIM))
    vecs = np.round(codes[topic_of, creator] + VECTOR_NOISE * noise, 4)
    return [json.dumps(v.tolist()) for v in vecs] if fmt == "csv" else [v.tolist() for v in vecs]


ENTITY_DECLARATIONS = {"author": {"type": "person", "separator": ";"}, "director": {"type": "person"},
                       "artist": {"type": "person"}, "brand": {"type": "brand"}, "year": False}


def dataset_json(layouts: Sequence[Layout], identity_map: bool, nightly: bool = False,
                 entities: bool = False, vectors: bool = False) -> dict[str, Any]:
    """The data set's dataset.json: every domain's files, columns and formats; ``entities``: the attribute columns'
    entity declarations; ``vectors``: the style_vec declaration."""
    from crossrec.data.synthetic import VECTOR_DIM

    domains: dict[str, Any] = {}
    for lay in layouts:
        inter: dict[str, Any] = {"path": f"{lay.name}/interactions", "format": lay.fmt}
        if lay.fmt == "csv":
            inter["options"] = {"delimiter": ",", "encoding": "utf-8"}
        inter.update(columns=dict(lay.columns), timestamp=lay.timestamp, default_event_type="interaction")
        items = {"path": f"{lay.name}/items" if nightly else f"{lay.name}/items.{lay.ext}", "format": lay.fmt, "columns": dict(lay.item_columns),
                 "text_columns": list(lay.text_columns), "attribute_columns": list(lay.attribute_columns)}
        declared = {c: ENTITY_DECLARATIONS[c] for c in lay.attribute_columns if c in ENTITY_DECLARATIONS}
        if entities and declared:
            items["entities"] = declared
        if vectors:
            items["vectors"] = {"style_vec": {"dim": VECTOR_DIM, "modality": "image"}}
        domains[lay.name] = {"interactions": inter, "items": items}
    out: dict[str, Any] = {"name": "crossrec-synthetic", "domains": domains}
    if identity_map:
        out["identity_map"] = {"path": "identity_map" if nightly else "identity_map.csv", "format": "csv",
                               "columns": {"domain": "domain", "user_id": "local_user", "global_user_id": "person"}}
    return out


def keep_new_items_last(user: np.ndarray, domain: np.ndarray, pos: np.ndarray, item: np.ndarray,
                        catalogs: Sequence[DomainCatalog]) -> np.ndarray:
    """``item`` with every pick of a new item (:attr:`DomainCatalog.new`) that is not one of its user's latest two
    events of the domain replaced by the item's twin: new items stay validation and test targets (events grouped by
    user, ``pos`` their order)."""
    order = np.lexsort((pos, domain, user))
    u_o, d_o = user[order], domain[order]
    same = (u_o[1:] == u_o[:-1]) & (d_o[1:] == d_o[:-1])  # event k+1 is of k's user and domain
    last = np.ones(len(user), dtype=bool)
    last[:-1] = ~same
    second = np.zeros(len(user), dtype=bool)
    second[:-1] = same & last[1:]
    latest = np.empty(len(user), dtype=bool)
    latest[order] = last | second
    item = item.copy()
    for d, catalog in enumerate(catalogs):
        m = (domain == d) & ~latest
        m[m] = catalog.new[item[m]]
        item[m] = catalog.twin[item[m]]
    return item


def build_domain_catalog(layout: Layout, spec: SyntheticSpec, rng: np.random.Generator, index: int) -> DomainCatalog:
    n, t_count = spec.items_per_domain, spec.topics
    topic_of = rng.permutation(np.arange(n) % t_count)  # every topic has items
    cdf_parts, item_parts = [], []
    for t in range(t_count):
        members = rng.permutation(np.flatnonzero(topic_of == t))  # popularity rank order
        w = 1.0 / np.arange(1, len(members) + 1) ** ZIPF_S
        c = np.cumsum(w) / w.sum()
        c[-1] = 1.0
        cdf_parts.append(t + c)
        item_parts.append(members)

    themes = [theme_of(int(t)) for t in topic_naming(spec, index)]
    people = [[f"{_FIRST[i]} {_LAST[j]}" for i, j in zip(rng.integers(0, len(_FIRST), 4),
                                                         rng.integers(0, len(_LAST), 4))] for _ in themes]
    brands = None
    if spec.entity_signal == "shared":  # the same people and brands per topic in every domain (drawn aside)
        people, brands = zip(*(shared_entities(spec, t) for t in range(t_count)))
    bands = [[(w if w.endswith("s") else w + "s") for w in th.words[:3]] for th in themes]
    templates = _TITLES.get(layout.name, _TITLES.get(layout.kind, ("{a} {b}",)))
    ids, titles, cats, texts, attrs = [], [], [], [], []
    seen: dict[str, int] = {}
    word_pick = np.argsort(rng.random((n, 8)), axis=1)[:, :4]  # 4 different words of the item's topic
    template_pick = rng.integers(0, len(templates), size=n)
    person_pick = rng.integers(0, 4, size=n)
    other_pick = rng.integers(0, 1000, size=n)
    for i in range(n):
        th = themes[topic_of[i]]
        a, b, c, d = (th.words[k] for k in word_pick[i])
        title = templates[template_pick[i]].format(a=a, b=b)
        seen[title] = seen.get(title, 0) + 1
        if seen[title] > 1:
            title += _SEQUEL.get(layout.kind, " #{n}").format(n=seen[title])
        cat = category_name(th, layout.name)
        ids.append(make_item_id(layout.kind, layout.name, i))
        titles.append(title)
        cats.append(cat)
        text_kind = layout.kind if layout.kind in _TEXTS else "generic"
        texts.append(_TEXTS[text_kind].format(cat=cat.lower(), Cat=cat, A=b, a=b.lower(), b=c.lower(), c=d.lower()))
        person = people[topic_of[i]][person_pick[i]]
        if layout.kind == "books":
            if brands is not None and other_pick[i] % 3 == 0:  # a co-author of the same topic
                person = f"{person}; {people[topic_of[i]][(person_pick[i] + 1) % 4]}"
            attrs.append((person, _PUBLISHERS[other_pick[i] % len(_PUBLISHERS)]))
        elif layout.kind == "movies":
            attrs.append((person, int(1970 + other_pick[i] % 55)))
        elif layout.kind == "music":
            artist = f"The {bands[topic_of[i]][person_pick[i]]}" if person_pick[i] < 3 and brands is None else person
            attrs.append((artist, _LABELS[other_pick[i] % len(_LABELS)]))
        elif brands is not None:
            attrs.append((brands[topic_of[i]][person_pick[i] % 2],))
        else:
            attrs.append((_BRANDS[other_pick[i] % len(_BRANDS)],))

    ic = layout.item_columns
    columns: dict[str, list[Any]] = {ic["item_id"]: ids, ic["title"]: titles, ic["category"]: cats}
    text_extra = [c for c in layout.text_columns if c not in columns]
    if text_extra:
        columns[text_extra[0]] = texts
    for k, col in enumerate(layout.attribute_columns):
        columns[col] = [a[k] for a in attrs]
    n_creators = 2 if layout.kind == "generic" else 4
    if spec.vector_signal == "creator":  # drawn aside: the other columns do not change
        columns["style_vec"] = style_vectors(spec, index, topic_of, person_pick % n_creators, layout.fmt)
    new = twin = None
    if spec.new_items > 0:  # drawn aside too
        aside = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x4E1, index]))
        new = aside.random(n) < spec.new_items
        twin = new_item_twins(topic_of, person_pick % n_creators, new, aside.random(n))
    return DomainCatalog(ids, columns, np.concatenate(cdf_parts), np.concatenate(item_parts).astype(np.int64),
                         topic_of=topic_of, creator=person_pick % n_creators, n_creators=n_creators, new=new, twin=twin)


__all__ = ["DOMAIN_NAMES", "FORMATS", "BAD_REASONS", "Theme", "theme_of", "category_name", "domain_name", "Layout",
           "domain_layout", "make_item_id", "DomainCatalog", "topic_naming", "shared_entities", "new_item_twins",
           "ENTITY_DECLARATIONS", "dataset_json", "keep_new_items_last", "build_domain_catalog"]
