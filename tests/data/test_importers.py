"""Tests of crossrec.data.importers on handmade fixtures in tmp_path and, when present, the real data."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossrec.data.importers import (
    SEQUENCE_START_S,
    SEQUENCE_STEP_S,
    import_amazon_food_kitchen,
    import_recbole_atomic,
)

REAL_FOOD_KITCHEN = Path(__file__).resolve().parents[2].parent / "shared/data/amazon-food-kitchen"
H = SEQUENCE_STEP_S
T0 = SEQUENCE_START_S

ITEMS_TSV = (
    "item_index\tdomain\tasin\ttitle\n"
    "0\tfood\tF0\tOat Flakes, 500 g\n"
    "1\tfood\tF1\tGreen \"Sencha\" Tea\n"
    "2\tfood\tF2\tDark Chocolate\n"
    "3\tkitchen\tK3\tChef Knife\n"
    "4\tkitchen\tK4\tCutting Board\n"
    "5\tkitchen\tK5\tTea Kettle\n"
)
SEQUENCES = {
    "train_A.txt": "1\t0,1,2\n2\t2,1,\n",  # trailing comma: one empty token
    "train_B.txt": "1\t3,4\n2\t5,,4\n",  # empty token in the middle
    "train_overlap.txt": "1\t0,3,1,5\n2\t4,99,2\n",  # 99 is not in items.tsv
    "valid.txt": "1\t1,4\n",
    "test.txt": "1\t2,5,0\n3\t3\n",
}


def write_food_kitchen(root: Path, sequences: dict[str, str] | None = None, items: str = ITEMS_TSV) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "items.tsv").write_text(items)
    for name, text in (sequences or SEQUENCES).items():
        (root / name).write_text(text)
    return root


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame([[str(v) for v in r] for r in rows], columns=columns)


INTER = ["user_id", "item_id", "event_ts", "event_type"]


# ----------------------------------------------------------------------------------------------------
# Amazon Food + Kitchen on a handmade fixture.


def test_food_kitchen_fixture_is_converted_exactly(tmp_path: Path) -> None:
    src = write_food_kitchen(tmp_path / "src")
    manifest = import_amazon_food_kitchen(src, tmp_path / "raw")
    raw = tmp_path / "raw"

    pd.testing.assert_frame_equal(read_csv(raw / "food/items.csv"), frame(
        [("F0", "Oat Flakes, 500 g"), ("F1", 'Green "Sencha" Tea'), ("F2", "Dark Chocolate")], ["item_id", "title"]))
    pd.testing.assert_frame_equal(read_csv(raw / "kitchen/items.csv"), frame(
        [("K3", "Chef Knife"), ("K4", "Cutting Board"), ("K5", "Tea Kettle")], ["item_id", "title"]))
    r = "review"
    pd.testing.assert_frame_equal(read_csv(raw / "food/interactions.csv"), frame([
        ("A_1", "F0", T0, r), ("A_1", "F1", T0 + H, r), ("A_1", "F2", T0 + 2 * H, r),
        ("A_2", "F2", T0, r), ("A_2", "F1", T0 + H, r),
        ("overlap_1", "F0", T0, r), ("overlap_1", "F1", T0 + 2 * H, r),
        ("overlap_2", "F2", T0 + 2 * H, r),
        ("valid_1", "F1", T0, r),
        ("test_1", "F2", T0, r), ("test_1", "F0", T0 + 2 * H, r),
    ], INTER))
    pd.testing.assert_frame_equal(read_csv(raw / "kitchen/interactions.csv"), frame([
        ("B_1", "K3", T0, r), ("B_1", "K4", T0 + H, r),
        ("B_2", "K5", T0, r), ("B_2", "K4", T0 + H, r),
        ("overlap_1", "K3", T0 + H, r), ("overlap_1", "K5", T0 + 3 * H, r),
        ("overlap_2", "K4", T0, r), ("overlap_2", "idx:99", T0 + H, r),  # unknown index: kept, in kitchen
        ("valid_1", "K4", T0 + H, r),
        ("test_1", "K5", T0 + H, r),
        ("test_3", "K3", T0, r),
    ], INTER))
    pd.testing.assert_frame_equal(read_csv(raw / "cohorts.csv"), frame([
        ("A_1", "A"), ("A_2", "A"), ("B_1", "B"), ("B_2", "B"), ("overlap_1", "overlap"), ("overlap_2", "overlap"),
        ("valid_1", "valid"), ("test_1", "test"), ("test_3", "test")], ["user_id", "cohort"]))

    assert json.loads((raw / "manifest.json").read_text()) == manifest
    assert manifest["interactions"] == 22 and manifest["empty_tokens"] == 2 and manifest["unknown_items"] == 1
    assert manifest["cohorts"] == {"A": 2, "B": 2, "overlap": 2, "valid": 1, "test": 2}
    assert {n: f["empty_tokens"] for n, f in manifest["files"].items()} == {
        "train_A.txt": 1, "train_B.txt": 1, "train_overlap.txt": 0, "valid.txt": 0, "test.txt": 0}
    assert manifest["files"]["train_overlap.txt"]["unknown_items"] == 1
    assert manifest["files"]["train_overlap.txt"]["per_domain"] == {"food": 3, "kitchen": 4}
    assert manifest["domains"] == {"food": {"items": 3, "interactions": 11, "users": 6},
                                   "kitchen": {"items": 3, "interactions": 11, "users": 7}}


def test_food_kitchen_dataset_json_points_at_the_files(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    import_amazon_food_kitchen(write_food_kitchen(tmp_path / "src"), raw)
    ds = json.loads((raw / "dataset.json").read_text())
    assert ds["name"] == "amazon-food-kitchen"
    assert list(ds["domains"]) == ["food", "kitchen"]
    assert ds["extras"] == {"user_cohorts": "cohorts.csv"}
    assert "identity_map" not in ds  # user ids are global as written: overlap_1 is one user in both domains
    for domain, entry in ds["domains"].items():
        inter, items = entry["interactions"], entry["items"]
        assert inter["format"] == items["format"] == "csv"
        assert inter["timestamp"] == "epoch_s"
        assert set(read_csv(raw / inter["path"]).columns) == set(inter["columns"].values())
        assert set(read_csv(raw / items["path"]).columns) == set(items["columns"].values()) | set(items["text_columns"])


def test_food_kitchen_keeps_the_cross_domain_order_of_a_line(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    import_amazon_food_kitchen(write_food_kitchen(tmp_path / "src"), raw)
    both = pd.concat([read_csv(raw / "food/interactions.csv"), read_csv(raw / "kitchen/interactions.csv")])
    both["event_ts"] = both.event_ts.astype(int)
    for user, line in (("overlap_1", ["F0", "K3", "F1", "K5"]), ("overlap_2", ["K4", "idx:99", "F2"]),
                       ("test_1", ["F2", "K5", "F0"])):
        assert both[both.user_id == user].sort_values("event_ts").item_id.tolist() == line


def test_food_kitchen_rerun_gives_identical_bytes(tmp_path: Path) -> None:
    src = write_food_kitchen(tmp_path / "src")
    import_amazon_food_kitchen(src, tmp_path / "a")
    import_amazon_food_kitchen(src, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 7
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


@pytest.mark.parametrize("token", ["x2", "-1", "1.5", "0x1"])
def test_food_kitchen_bad_token_names_file_line_and_token(tmp_path: Path, token: str) -> None:
    sequences = {**SEQUENCES, "train_overlap.txt": f"1\t0,3\n\n2\t4,{token},2\n"}
    src = write_food_kitchen(tmp_path / "src", sequences)
    with pytest.raises(ValueError) as err:
        import_amazon_food_kitchen(src, tmp_path / "raw")
    message = str(err.value)
    assert "train_overlap.txt" in message and "line 3" in message and repr(token) in message
    assert not (tmp_path / "raw").exists()  # nothing written


def test_food_kitchen_missing_file_is_named(tmp_path: Path) -> None:
    src = write_food_kitchen(tmp_path / "src")
    (src / "valid.txt").unlink()
    with pytest.raises(FileNotFoundError, match="valid.txt"):
        import_amazon_food_kitchen(src, tmp_path / "raw")
    with pytest.raises(FileNotFoundError, match="items.tsv"):
        import_amazon_food_kitchen(tmp_path / "nowhere", tmp_path / "raw")


def test_food_kitchen_bad_items_header_and_repeated_user_raise(tmp_path: Path) -> None:
    src = write_food_kitchen(tmp_path / "src", items=ITEMS_TSV.replace("asin", "id"))
    with pytest.raises(ValueError, match="header"):
        import_amazon_food_kitchen(src, tmp_path / "raw")
    src = write_food_kitchen(tmp_path / "src2", {**SEQUENCES, "test.txt": "1\t2\n1\t3\n"})
    with pytest.raises(ValueError, match="test.txt: line 2: user '1' appears on two lines"):
        import_amazon_food_kitchen(src, tmp_path / "raw")


token_lists = st.lists(st.one_of(st.integers(0, 8).map(str), st.just("")), max_size=12)


@settings(max_examples=40, deadline=None)
@given(lines=st.lists(st.lists(token_lists, min_size=5, max_size=5), min_size=1, max_size=6))
def test_food_kitchen_every_token_accounted_for(lines: list[list[list[str]]]) -> None:
    """Random lines (indexes 0-8, 6-8 unknown, empty tokens): each token is a row or a counted empty token,
    and each user's rows across both domains are hours 0, 1, 2, ... of its line in line order."""
    names = list(SEQUENCES)
    sequences = {name: "".join(f"{u + 1}\t{','.join(line[k])}\n" for u, line in enumerate(lines))
                 for k, name in enumerate(names)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = import_amazon_food_kitchen(write_food_kitchen(root / "src", sequences), root / "raw")
        rows = pd.concat([read_csv(root / "raw/food/interactions.csv"),
                          read_csv(root / "raw/kitchen/interactions.csv")])
    tokens = [t for line in lines for per_file in line for t in per_file]
    written = [",".join(per_file) for line in lines for per_file in line]
    assert manifest["interactions"] == len(rows) == sum(1 for t in tokens if t)
    assert manifest["empty_tokens"] == sum(w.split(",").count("") for w in written if w)  # "" is no item
    assert sum(f["users_without_items"] for f in manifest["files"].values()) == sum(
        1 for w in written if not w.replace(",", ""))
    assert manifest["unknown_items"] == sum(1 for t in tokens if t and int(t) > 5)
    asin = {str(i): a for i, a in enumerate(["F0", "F1", "F2", "K3", "K4", "K5"])}
    for k, name in enumerate(names):
        cohort = manifest["files"][name]["cohort"]
        for u, line in enumerate(lines):
            got = rows[rows.user_id == f"{cohort}_{u + 1}"].assign(t=lambda d: d.event_ts.astype(int))
            got = got.sort_values("t")
            wanted = [asin.get(t, f"idx:{t}") for t in line[k] if t]
            assert got.item_id.tolist() == wanted
            assert got.t.tolist() == [T0 + H * i for i in range(len(wanted))]


@pytest.mark.skipif(not REAL_FOOD_KITCHEN.is_dir(), reason=f"real Amazon Food+Kitchen data not found at "
                                                           f"{REAL_FOOD_KITCHEN}")
def test_real_food_kitchen(tmp_path: Path) -> None:
    manifest = import_amazon_food_kitchen(REAL_FOOD_KITCHEN, tmp_path / "raw")
    assert manifest["interactions"] == 436_127
    assert manifest["cohorts"] == {"A": 5472, "B": 38191, "overlap": 7501, "valid": 960, "test": 937}
    assert manifest["unknown_items"] == 0
    assert manifest["domains"]["food"]["items"] == 8661 and manifest["domains"]["kitchen"]["items"] == 27637
    cohorts = read_csv(tmp_path / "raw/cohorts.csv")
    assert cohorts.user_id.is_unique and (cohorts.cohort == "test").sum() == 937
    food = read_csv(tmp_path / "raw/food/interactions.csv")
    kitchen = read_csv(tmp_path / "raw/kitchen/interactions.csv")
    assert len(food) + len(kitchen) == 436_127
    assert set(food.user_id.str.split("_").str[0]) == {"A", "overlap", "valid", "test"}
    assert set(kitchen.user_id.str.split("_").str[0]) == {"B", "overlap", "valid", "test"}
    assert set(food.item_id) <= set(read_csv(tmp_path / "raw/food/items.csv").item_id)
    assert set(kitchen.item_id) <= set(read_csv(tmp_path / "raw/kitchen/items.csv").item_id)


# ----------------------------------------------------------------------------------------------------
# RecBole atomic files.

INTER_FILE = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\ti1\t4.0\t100.0\n"
    "u1\ti3\t5\t200\n"
    "u2\ti2\t3.0\t150\n"
    "u2\ti9\t1.0\t160\n"  # i9 is not in the .item file
    "u3\ti1\t2.0\tabc\n"  # unparseable timestamp
)
ITEM_FILE = (
    "item_id:token\ttitle:token_seq\tshop:token\tbrand:token\tcategories:token_seq\n"
    "i1\tRed Book\tBooks\tAcme\tfiction novel\n"
    "i2\tBlue Movie\tMovies & TV\tBeta\tdrama\n"
    "i3\tGreen Book\tBooks\tAcme\tpoetry\n"
)


def write_recbole(root: Path, inter: str = INTER_FILE, item: str = ITEM_FILE, name: str = "mini") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.inter").write_text(inter)
    (root / f"{name}.item").write_text(item)
    return root


def test_recbole_domain_field(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    manifest = import_recbole_atomic(write_recbole(tmp_path / "src"), raw, "shop")
    inter = ["user_id", "item_id", "event_ts", "event_type", "weight"]
    pd.testing.assert_frame_equal(read_csv(raw / "books/interactions.csv"), frame(
        [("u1", "i1", 100, "rating", "4.0"), ("u1", "i3", 200, "rating", "5"), ("u3", "i1", "abc", "rating", "2.0")],
        inter))
    pd.testing.assert_frame_equal(read_csv(raw / "movies_tv/interactions.csv"), frame(
        [("u2", "i2", 150, "rating", "3.0")], inter))
    pd.testing.assert_frame_equal(read_csv(raw / "books/items.csv"), frame(
        [("i1", "Red Book", "fiction novel", "Acme"), ("i3", "Green Book", "poetry", "Acme")],
        ["item_id", "title", "categories", "brand"]))
    assert manifest["dropped_unknown_item"] == 1 and manifest["unparseable_timestamps"] == 1
    assert manifest["interactions"] == 4 and manifest["timestamp"] == "epoch_s"
    assert manifest["domains"] == {"books": {"items": 2, "interactions": 3, "users": 2},
                                   "movies_tv": {"items": 1, "interactions": 1, "users": 1}}
    ds = json.loads((raw / "dataset.json").read_text())
    assert ds["name"] == "mini" and list(ds["domains"]) == ["books", "movies_tv"]
    assert ds["domains"]["books"] == {
        "interactions": {"path": "books/interactions.csv", "format": "csv",
                         "options": {"delimiter": ",", "encoding": "utf-8"},
                         "columns": {c: c for c in inter}, "timestamp": "epoch_s",
                         "default_event_type": "interaction"},
        "items": {"path": "books/items.csv", "format": "csv",
                  "columns": {"item_id": "item_id", "title": "title", "category": "categories"},
                  "text_columns": ["title"], "attribute_columns": ["brand"]},
    }


def test_recbole_single_domain_keeps_unknown_items(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    manifest = import_recbole_atomic(write_recbole(tmp_path / "src"), raw, "shop_all")
    got = read_csv(raw / "shop_all/interactions.csv")
    assert got.item_id.tolist() == ["i1", "i3", "i2", "i9", "i1"]
    assert manifest["dropped_unknown_item"] == 0
    items = read_csv(raw / "shop_all/items.csv")
    assert list(items.columns) == ["item_id", "title", "categories", "shop", "brand"]
    assert len(items) == 3


def test_recbole_fractional_timestamps_become_epoch_ms_and_no_rating_no_weight(tmp_path: Path) -> None:
    inter = "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t100.25\nu1\ti2\t101\n"
    raw = tmp_path / "raw"
    manifest = import_recbole_atomic(write_recbole(tmp_path / "src", inter=inter), raw, "all")
    pd.testing.assert_frame_equal(read_csv(raw / "all/interactions.csv"), frame(
        [("u1", "i1", 100250, "interaction"), ("u1", "i2", 101000, "interaction")], INTER))
    assert manifest["timestamp"] == "epoch_ms"
    assert json.loads((raw / "dataset.json").read_text())["domains"]["all"]["interactions"]["timestamp"] == "epoch_ms"


def test_recbole_errors(tmp_path: Path) -> None:
    src = write_recbole(tmp_path / "src")
    (src / "mini.item").unlink()
    with pytest.raises(FileNotFoundError, match="mini.item"):
        import_recbole_atomic(src, tmp_path / "raw", "shop")
    src = write_recbole(tmp_path / "two")
    write_recbole(src, name="other")
    with pytest.raises(FileNotFoundError, match="exactly one .inter"):
        import_recbole_atomic(src, tmp_path / "raw", "shop")
    assert import_recbole_atomic(src, tmp_path / "raw", "shop", name="other")["name"] == "other"
    src = write_recbole(tmp_path / "nots", inter="user_id:token\titem_id:token\nu1\ti1\n")
    with pytest.raises(ValueError, match="timestamp"):
        import_recbole_atomic(src, tmp_path / "raw", "shop")
    with pytest.raises(ValueError, match="Not-A-Domain"):
        import_recbole_atomic(write_recbole(tmp_path / "ok"), tmp_path / "raw", "Not-A-Domain")
