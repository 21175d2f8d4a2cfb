"""Tests of crossrec.io.config: defaults, merge order, coercion, derived values and the pseudonym key (no Spark)."""
from __future__ import annotations

import os

import dataclasses
import re
import datetime as dt
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support import TEST_KEY
from crossrec.io.config import ConfigError, CrossrecConfig, resolve_config

RUN_DATE = "2024-06-30"


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- defaults
def test_defaults_of_the_dataclass():
    cfg = CrossrecConfig(run_date=RUN_DATE)
    assert dataclasses.asdict(cfg) == {
        "lake_root": "lakehouse",
        "raw_dir": "demo-data/raw",
        "run_date": RUN_DATE,
        "run_id": None,
        "spark_master": "local[*]",
        "spark_remote": None,
        "spark_conf": {},
        "pseudonym_key": None,
        "pseudonym_key_file": None,
        "min_event_ts": "1995-01-01",
        "max_text_chars": 10_000,
        "missing_items": "quarantine",
        "validate": True,
        "reports_dir": None,
        "max_seq_len": 50,
        "cold_start_users": 2000,
        "cold_start_fraction": 0.5,
        "cold_start_cohort": None,
        "seed": 42,
        "allow_empty_domains": False,
        "max_quarantine_share": 0.5,
        "vacuum_retention_hours": 168.0,
        "raw_paths_outside_root": False,
        "text_encoder": "auto",
        "full_refresh": False,
        "keep_run_dates": 7,
        "keep_models": 3,
        "mlflow_tracking_uri": None,
        "promotion_tolerance_se": 2.0,
        "compact_file_mb": 64.0,
    }
    with pytest.raises(ConfigError, match="keep_run_dates and keep_models must be >= 1"):
        CrossrecConfig(run_date=RUN_DATE, keep_models=0)
    with pytest.raises(ConfigError, match="promotion_tolerance_se must be >= 0"):
        CrossrecConfig(run_date=RUN_DATE, promotion_tolerance_se=-1.0)
    with pytest.raises(ConfigError, match="text_encoder must be 'auto', 'frozen' or 'finetune', got 'bert'"):
        CrossrecConfig(run_date=RUN_DATE, text_encoder="bert")
    assert cfg.reports_root == os.path.abspath("lakehouse") + "/_reports"
    assert cfg.effective_run_id("clean") == f"clean-{RUN_DATE}"


def test_resolve_with_nothing_gives_defaults_and_today_utc():
    before = dt.datetime.now(dt.timezone.utc).date().isoformat()
    cfg = resolve_config(environ={})
    after = dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert cfg.run_date in {before, after}
    assert dataclasses.replace(cfg, run_date=RUN_DATE) == CrossrecConfig(run_date=RUN_DATE)


def test_config_is_frozen():
    cfg = CrossrecConfig(run_date=RUN_DATE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lake_root = "elsewhere"  # type: ignore[misc]


def test_explicit_run_id_and_reports_dir_win_over_derived_values():
    cfg = CrossrecConfig(run_date=RUN_DATE, run_id="r42", reports_dir="/reports", lake_root="s3a://b/lake")
    assert cfg.effective_run_id("ingest") == "r42"
    assert cfg.reports_root == "/reports"
    assert CrossrecConfig(run_date=RUN_DATE, lake_root="s3a://b/lake/").reports_root == "s3a://b/lake/_reports"


# --------------------------------------------------------------------------------------------- merge order
def test_merge_order_defaults_file_env_overrides(tmp_path):
    toml = write_toml(tmp_path / "c.toml", (
        'lake_root = "from-file"\n'
        'raw_dir = "from-file"\n'
        'run_id = "from-file"\n'
        'max_text_chars = 5\n'
        f'run_date = "{RUN_DATE}"\n'
        '[spark_conf]\n"spark.sql.shuffle.partitions" = "8"\n'
    ))
    env = {"CROSSREC_RAW_DIR": "from-env", "CROSSREC_RUN_ID": "from-env", "CROSSREC_MISSING_ITEMS": "placeholder"}
    overrides = {"run_id": "from-flag", "lake_root": None, "raw_dir": None}
    cfg = resolve_config(toml, overrides, environ=env)
    assert cfg.lake_root == "from-file"  # a None flag does not erase the file's value
    assert cfg.raw_dir == "from-env"  # env beats file
    assert cfg.run_id == "from-flag"  # flag beats env
    assert cfg.max_text_chars == 5
    assert cfg.missing_items == "placeholder"
    assert cfg.spark_conf == {"spark.sql.shuffle.partitions": "8"}
    assert cfg.run_date == RUN_DATE
    assert cfg.validate is True  # untouched default


LAYER_VALUE = st.one_of(st.none(), st.text(alphabet="abcdefghij/_-", min_size=1, max_size=12))


@given(file_v=LAYER_VALUE, env_v=LAYER_VALUE, flag_v=LAYER_VALUE)
def test_merge_order_property(file_v, env_v, flag_v):
    """The last layer that sets a key wins; a layer that does not set it changes nothing."""
    with tempfile.TemporaryDirectory() as d:
        toml = write_toml(Path(d) / "c.toml", f'run_date = "{RUN_DATE}"\n' + (f'lake_root = "{file_v}"\n' if file_v else ""))
        env = {"CROSSREC_LAKE_ROOT": env_v} if env_v else {}
        cfg = resolve_config(toml, {"lake_root": flag_v}, environ=env)
    expected = next((v for v in (flag_v, env_v, file_v) if v), "lakehouse")
    assert cfg.lake_root == expected


def test_environ_argument_replaces_os_environ(monkeypatch):
    monkeypatch.setenv("CROSSREC_LAKE_ROOT", "from-os-environ")
    assert resolve_config(environ={}, overrides={"run_date": RUN_DATE}).lake_root == "lakehouse"
    assert resolve_config(overrides={"run_date": RUN_DATE}).lake_root == "from-os-environ"


def test_empty_and_unprefixed_env_values_are_ignored():
    env = {"CROSSREC_LAKE_ROOT": "", "LAKE_ROOT": "nope", "crossrec_raw_dir": "nope", "CROSSREC_RUN_DATE": RUN_DATE}
    cfg = resolve_config(environ=env)
    assert (cfg.lake_root, cfg.raw_dir) == ("lakehouse", "demo-data/raw")


# ------------------------------------------------------------------------------------------- bad inputs
def test_unknown_toml_key_is_named(tmp_path):
    toml = write_toml(tmp_path / "c.toml", 'lake_root = "x"\nlake_roots = "typo"\n')
    with pytest.raises(ConfigError, match=r"unknown keys \['lake_roots'\]") as e:
        resolve_config(toml, environ={})
    assert str(toml) in str(e.value)


def test_unknown_override_key_is_named():
    with pytest.raises(ConfigError, match="unknown config key 'lake_rot'"):
        resolve_config(overrides={"lake_rot": "x"}, environ={})


def test_missing_config_file_is_named(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as e:
        resolve_config(missing, environ={})
    assert str(missing) in str(e.value)


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path):
    toml = write_toml(tmp_path / "c.toml", "lake_root = \n")
    with pytest.raises(ConfigError) as e:
        resolve_config(toml, environ={})
    assert str(toml) in str(e.value)


@pytest.mark.parametrize("bad", ["2024-13-01", "30/06/2024", "yesterday", "2024-06-31"])
@pytest.mark.parametrize("layer", ["env", "flag", "direct"])
def test_bad_run_date(bad, layer):
    with pytest.raises(ConfigError, match=r"run_date must be YYYY-MM-DD, got '" + bad):
        if layer == "env":
            resolve_config(environ={"CROSSREC_RUN_DATE": bad})
        elif layer == "flag":
            resolve_config(overrides={"run_date": bad}, environ={})
        else:
            CrossrecConfig(run_date=bad)


def test_bad_min_event_ts():
    with pytest.raises(ConfigError, match="min_event_ts"):
        CrossrecConfig(run_date=RUN_DATE, min_event_ts="1995")


@pytest.mark.parametrize("value", ["drop", "Quarantine", ""])
def test_bad_missing_items(value):
    with pytest.raises(ConfigError, match="missing_items must be 'quarantine' or 'placeholder'"):
        CrossrecConfig(run_date=RUN_DATE, missing_items=value)


@pytest.mark.parametrize("value", [0, -1])
def test_max_text_chars_below_one(value):
    with pytest.raises(ConfigError, match=f"max_text_chars must be >= 1, got {value}"):
        CrossrecConfig(run_date=RUN_DATE, max_text_chars=value)


def test_max_text_chars_of_one_is_accepted():
    assert CrossrecConfig(run_date=RUN_DATE, max_text_chars=1).max_text_chars == 1


# ------------------------------------------------------------------------------------------- coercion
@pytest.mark.parametrize("text", ["1", "true", "TRUE", "Yes", "on"])
def test_bool_true_from_env(text):
    cfg = resolve_config(environ={"CROSSREC_VALIDATE": text, "CROSSREC_RUN_DATE": RUN_DATE})
    assert cfg.validate is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "OFF"])
def test_bool_false_from_env(text):
    cfg = resolve_config(environ={"CROSSREC_VALIDATE": text, "CROSSREC_RUN_DATE": RUN_DATE})
    assert cfg.validate is False


def test_bool_false_from_flag_is_not_ignored():
    """``--no-validate`` passes validate=False: a falsy, non-None flag must still override."""
    cfg = resolve_config(overrides={"validate": False, "run_date": RUN_DATE}, environ={"CROSSREC_VALIDATE": "true"})
    assert cfg.validate is False


@pytest.mark.parametrize("text", ["maybe", "2", "y"])
def test_bad_bool_from_env_names_the_key(text):
    with pytest.raises(ConfigError, match=f"validate must be true/false, got '{text}'"):
        resolve_config(environ={"CROSSREC_VALIDATE": text})


@given(n=st.integers(min_value=1, max_value=10**12))
def test_int_from_env(n):
    cfg = resolve_config(environ={"CROSSREC_MAX_TEXT_CHARS": str(n), "CROSSREC_RUN_DATE": RUN_DATE})
    assert cfg.max_text_chars == n
    assert type(cfg.max_text_chars) is int


@pytest.mark.parametrize("text", ["abc", "1.5", "10k"])
def test_bad_int_from_env_names_the_key(text):
    with pytest.raises(ConfigError, match=f"max_text_chars must be an integer, got '{text}'"):
        resolve_config(environ={"CROSSREC_MAX_TEXT_CHARS": text})


def test_string_fields_are_not_coerced():
    cfg = resolve_config(environ={"CROSSREC_RUN_ID": "007", "CROSSREC_LAKE_ROOT": "true", "CROSSREC_RUN_DATE": RUN_DATE})
    assert (cfg.run_id, cfg.lake_root) == ("007", "true")


def test_spark_conf_from_env_is_a_mapping_or_a_named_error():
    try:
        cfg = resolve_config(environ={"CROSSREC_SPARK_CONF": "spark.sql.shuffle.partitions=8", "CROSSREC_RUN_DATE": RUN_DATE})
    except ConfigError as e:
        assert "spark_conf" in str(e)
    else:
        assert isinstance(cfg.spark_conf, Mapping)


def test_toml_native_date_is_accepted(tmp_path):
    toml = write_toml(tmp_path / "c.toml", "run_date = 2024-06-30\nmin_event_ts = 2000-01-01\n")
    cfg = resolve_config(toml, environ={})
    assert (cfg.run_date, cfg.min_event_ts) == ("2024-06-30", "2000-01-01")


# --------------------------------------------------------------------------------------------- spark_master
@pytest.mark.parametrize("value", ["none", "None"])
def test_spark_master_none_means_spark_submit(value, tmp_path):
    assert resolve_config(overrides={"spark_master": value, "run_date": RUN_DATE}, environ={}).spark_master is None
    assert resolve_config(environ={"CROSSREC_SPARK_MASTER": value, "CROSSREC_RUN_DATE": RUN_DATE}).spark_master is None
    toml = write_toml(tmp_path / "c.toml", f'spark_master = "{value}"\nrun_date = "{RUN_DATE}"\n')
    assert resolve_config(toml, environ={}).spark_master is None


def test_spark_master_other_values_are_kept():
    cfg = resolve_config(overrides={"spark_master": "spark://host:7077", "run_date": RUN_DATE}, environ={})
    assert cfg.spark_master == "spark://host:7077"


# ---------------------------------------------------------------------------------------------- table_path
@pytest.mark.parametrize(
    "root, name, expected",
    [
        # a relative local root is made absolute (Delta reads "lakehouse/x" as a table name)
        ("lakehouse", "silver.interactions", os.path.abspath("lakehouse") + "/silver/interactions"),
        ("/data/lake/", "bronze.items", "/data/lake/bronze/items"),
        ("s3a://bucket/lake", "ops.accounting", "s3a://bucket/lake/ops/accounting"),
        ("s3a://bucket/lake/", "silver.items", "s3a://bucket/lake/silver/items"),
        ("abfss://c@acct.dfs.core.windows.net/lake", "silver.quarantine",
         "abfss://c@acct.dfs.core.windows.net/lake/silver/quarantine"),
    ],
)
def test_table_path(root, name, expected):
    assert CrossrecConfig(run_date=RUN_DATE, lake_root=root).table_path(name) == expected


@pytest.mark.parametrize("name", ["interactions", "silver.", ""])
def test_table_path_needs_layer_and_table(name):
    with pytest.raises(ConfigError, match="'<layer>.<table>'"):
        CrossrecConfig(run_date=RUN_DATE).table_path(name)


# -------------------------------------------------------------------------------------------- pseudonym key
def test_key_from_value():
    assert CrossrecConfig(run_date=RUN_DATE, pseudonym_key=TEST_KEY).require_pseudonym_key() == TEST_KEY.encode()


def test_key_from_env_via_resolve():
    cfg = resolve_config(environ={"CROSSREC_PSEUDONYM_KEY": TEST_KEY, "CROSSREC_RUN_DATE": RUN_DATE})
    assert cfg.require_pseudonym_key() == TEST_KEY.encode()


def test_key_from_file(key_file):
    cfg = CrossrecConfig(run_date=RUN_DATE, pseudonym_key_file=str(key_file))
    assert cfg.require_pseudonym_key() == TEST_KEY.encode("utf-8")


def test_key_file_surrounding_whitespace_is_stripped(tmp_path):
    p = tmp_path / "k"
    p.write_text(f"  {TEST_KEY}\n\n", encoding="utf-8")
    assert CrossrecConfig(run_date=RUN_DATE, pseudonym_key_file=str(p)).require_pseudonym_key() == TEST_KEY.encode()


def test_key_value_wins_over_file(tmp_path):
    cfg = CrossrecConfig(run_date=RUN_DATE, pseudonym_key="v" * 20, pseudonym_key_file=str(tmp_path / "absent"))
    assert cfg.require_pseudonym_key() == b"v" * 20


def test_missing_key_file_is_named(tmp_path):
    missing = tmp_path / "absent.key"
    with pytest.raises(ConfigError, match="does not exist") as e:
        CrossrecConfig(run_date=RUN_DATE, pseudonym_key_file=str(missing)).require_pseudonym_key()
    assert str(missing) in str(e.value)


def test_key_file_that_is_a_folder_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        CrossrecConfig(run_date=RUN_DATE, pseudonym_key_file=str(tmp_path)).require_pseudonym_key()


@pytest.mark.parametrize("key", ["x" * 15, "  short-key  \n", ""])
def test_short_key_in_file(tmp_path, key):
    p = tmp_path / "k"
    p.write_text(key, encoding="utf-8")
    with pytest.raises(ConfigError, match="shorter than 16 characters") as e:
        CrossrecConfig(run_date=RUN_DATE, pseudonym_key_file=str(p)).require_pseudonym_key()
    assert str(p) in str(e.value)


def test_key_of_exactly_16_chars_in_file(tmp_path):
    p = tmp_path / "k"
    p.write_text("k" * 16, encoding="utf-8")
    assert CrossrecConfig(run_date=RUN_DATE, pseudonym_key_file=str(p)).require_pseudonym_key() == b"k" * 16


def test_short_key_value_is_rejected():
    with pytest.raises(ConfigError, match="shorter than 16"):
        CrossrecConfig(run_date=RUN_DATE, pseudonym_key="abc").require_pseudonym_key()


def test_no_key_configured_names_the_env_variable():
    with pytest.raises(ConfigError) as e:
        resolve_config(environ={"CROSSREC_RUN_DATE": RUN_DATE}).require_pseudonym_key()
    msg = str(e.value)
    assert "CROSSREC_PSEUDONYM_KEY" in msg
    assert "CROSSREC_PSEUDONYM_KEY_FILE" in msg
    assert "--pseudonym-key-file" in msg


def test_masked_hides_every_secret_named_value_at_any_depth():
    conf = {"spark.hadoop.fs.s3a.secret.key": "S3SECRET", "spark.hadoop.fs.azure.account.key.x": "AZKEY",
            "spark.custom.password": "PW", "spark.auth.token": "TOK", "spark.sql.shuffle.partitions": "8"}
    cfg = CrossrecConfig(run_date=RUN_DATE, pseudonym_key=TEST_KEY, pseudonym_key_file="/secrets/k", lake_root="s3a://b/l",
                         spark_conf=conf)
    m = cfg.masked()
    assert m["pseudonym_key"] == "***" and m["pseudonym_key_file"] == "/secrets/k"  # a path, documented as no secret
    assert m["spark_conf"] == {**{k: "***" for k in conf}, "spark.sql.shuffle.partitions": "8"}
    for text in (repr(m), repr(cfg), str(cfg)):
        assert not {TEST_KEY, "S3SECRET", "AZKEY", "PW", "TOK"} & set(re.findall(r"[A-Za-z0-9_-]+", text)), text
    assert {k: v for k, v in m.items() if k not in ("pseudonym_key", "spark_conf")} == {
        k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("pseudonym_key", "spark_conf")
    }
    assert cfg.pseudonym_key == TEST_KEY and cfg.spark_conf == conf  # masking does not touch the config


@pytest.mark.parametrize("name, secret", [("pseudonym_key", True), ("pseudonym_key_file", False),
                                          ("fs.s3a.access.key", True), ("api_token", True), ("DB_PASSWORD", True),
                                          ("spark.executor.memory", False), ("lake_root", False)])
def test_secrets_are_found_by_rule_not_by_a_list(name, secret):
    from crossrec.io.config import is_secret

    assert is_secret(name) is secret


def test_a_malformed_spark_conf_error_does_not_echo_its_value():
    with pytest.raises(ConfigError) as e:
        resolve_config(environ={"CROSSREC_RUN_DATE": RUN_DATE, "CROSSREC_SPARK_CONF": "fs.s3a.secret.key:HUNTER2"})
    assert "spark_conf must look like" in str(e.value) and "HUNTER2" not in str(e.value)


def test_masked_without_key_leaves_none():
    assert CrossrecConfig(run_date=RUN_DATE).masked()["pseudonym_key"] is None
