"""crossrec.columns against the table contracts: every constant names a column of some contract, and every column
that two or more contracts share has a constant. No Spark session is started."""
from __future__ import annotations

from collections import defaultdict

from crossrec import columns as C
from crossrec.quality.contracts import Column, Contract, all_contracts


def constants(module) -> dict[str, str]:
    """The module's column constants: name -> column name."""
    return {name: getattr(module, name) for name in module.__all__}


def tables_by_column(contracts) -> dict[str, set[str]]:
    """column name -> the tables whose contract has it."""
    out: dict[str, set[str]] = defaultdict(set)
    for contract in contracts:
        for name in contract.column_names:
            out[name].add(contract.table)
    return dict(out)


def unknown_constants(consts: dict[str, str], columns: dict[str, set[str]]) -> dict[str, str]:
    """Constants that name no column of any contract (a typo, or a column since renamed)."""
    return {name: value for name, value in consts.items() if value not in columns}


def shared_without_constant(consts: dict[str, str], columns: dict[str, set[str]]) -> dict[str, set[str]]:
    """Columns of two or more contracts that no constant names."""
    named = set(consts.values())
    return {col: tables for col, tables in columns.items() if len(tables) >= 2 and col not in named}


def _contract(table: str, *names: str) -> Contract:
    return Contract(table=table, columns=tuple(Column(name=n, type="string") for n in names))


def test_all_lists_every_constant_once():
    public = {n for n in vars(C) if n.isupper()}
    assert sorted(C.__all__) == sorted(public), "crossrec.columns.__all__ must list exactly its constants"
    assert len(C.__all__) == len(set(C.__all__))


def test_constant_names_spell_their_columns():
    consts = constants(C)
    assert {n: v for n, v in consts.items() if n != v.upper()} == {}, "a constant is its column's name in capitals"
    assert len(set(consts.values())) == len(consts), "two constants name one column"


def test_every_constant_names_a_contract_column():
    assert unknown_constants(constants(C), tables_by_column(all_contracts())) == {}


def test_every_shared_column_has_a_constant():
    columns = tables_by_column(all_contracts())
    assert sum(len(t) >= 2 for t in columns.values()) >= 10, "the contracts share columns: the check has something to check"
    assert shared_without_constant(constants(C), columns) == {}


def test_the_checks_catch_a_typo_and_a_missing_constant():
    contracts = [_contract("silver.a", "user_id", "item_id", "only_a"), _contract("gold.b", "user_id", "item_id")]
    columns = tables_by_column(contracts)
    typo = {"USER_ID": "user_ids", "ITEM_ID": "item_id"}
    assert unknown_constants(typo, columns) == {"USER_ID": "user_ids"}
    assert shared_without_constant(typo, columns) == {"user_id": {"silver.a", "gold.b"}}
    # a column of one contract only needs no constant
    assert shared_without_constant({"USER_ID": "user_id", "ITEM_ID": "item_id"}, columns) == {}
