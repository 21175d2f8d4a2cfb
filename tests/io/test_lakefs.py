"""crossrec.io.lakefs (files beside the tables on any filesystem) against moto's S3 server, and the Spark settings an
object-store lake adds (crossrec.io.spark.with_object_store)."""
from __future__ import annotations

import pytest

from crossrec.io import lakefs
from crossrec.io.spark import hadoop_version, with_object_store
from support import moto_s3


@pytest.fixture()
def s3(monkeypatch, tmp_path):
    server, env = moto_s3("bkt")
    for k, v in {**env, "CROSSREC_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(k, v)
    yield "s3a://bkt"
    server.stop()


def test_paths_and_schemes():
    assert lakefs.is_remote("s3a://b/lake") and lakefs.is_remote("abfss://c@a.dfs.core.windows.net/x")
    assert not lakefs.is_remote("/tmp/lake") and not lakefs.is_remote("file:/tmp/lake")
    assert lakefs.local_path("file:///tmp/lake") == "/tmp/lake" and lakefs.local_path("file:/tmp/lake") == "/tmp/lake"
    assert lakefs.s3_uri("s3a://b/k") == "s3://b/k" and lakefs.s3_uri("gs://b/k") == "gs://b/k"
    assert lakefs.join("s3a://b/lake/", "/models/", "v1") == "s3a://b/lake/models/v1"


def test_a_folder_goes_up_and_comes_back_as_a_local_copy_renewed_when_it_changes(s3, tmp_path):
    src = tmp_path / "v1"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "sub").mkdir()
    (src / "sub" / "w.bin").write_bytes(b"\x00" * 10)
    uri = lakefs.upload(src, f"{s3}/lake/models/v1")
    assert lakefs.exists(f"{uri}/config.json") and lakefs.exists(f"{uri}/sub/w.bin")
    assert not lakefs.exists(f"{uri}/nothing.json")

    copy = lakefs.local_copy(uri)
    assert copy.startswith(str(tmp_path / "cache")) and (tmp_path / "cache").exists()
    assert open(f"{copy}/sub/w.bin", "rb").read() == b"\x00" * 10
    assert lakefs.local_copy(uri) == copy  # once per process

    (src / "config.json").write_text('{"changed": true}')
    lakefs.upload(src, uri)
    lakefs._COPIES.clear()  # a new process
    renewed = lakefs.local_copy(uri)
    assert renewed != copy and open(f"{renewed}/config.json").read() == '{"changed": true}'

    lakefs.delete_folder(uri)
    assert not lakefs.exists(f"{uri}/config.json")
    lakefs._COPIES.clear()
    with pytest.raises(FileNotFoundError, match="no such folder"):
        lakefs.local_copy(uri)


def test_a_local_folder_is_its_own_copy(tmp_path):
    assert lakefs.local_copy(tmp_path) == str(tmp_path)
    assert lakefs.local_copy(f"file:{tmp_path}") == str(tmp_path)


def test_an_s3a_lake_adds_the_s3a_connector_and_the_endpoint_of_the_aws_variables(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    conf = with_object_store({"spark.jars.packages": "a:b:1", "spark.hadoop.fs.s3a.path.style.access": "false"},
                             ["s3a://b/lake", None], embedded=True)
    assert conf["spark.jars.packages"] == f"a:b:1,org.apache.hadoop:hadoop-aws:{hadoop_version()}"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "false"  # the config's own setting wins
    assert "spark.jars.packages" not in with_object_store({}, ["s3a://b/lake"], embedded=False)  # spark-submit's
    assert with_object_store({"x": "1"}, ["/tmp/lake", "demo-data/raw"], embedded=True) == {"x": "1"}
