"""``crossrec bench ingest`` and ``crossrec bench training`` on small sizes: they run and report what they promise."""
from __future__ import annotations

import json

import pytest


@pytest.mark.spark
@pytest.mark.slow
def test_ingest_bench_compares_crossrec_with_a_plain_copy_and_the_two_layer_floor(spark, tmp_path):
    from crossrec.bench.ingest import IngestSpec, run_ingest

    # no warm-up: this test checks what the bench reports, not its figures
    run_ingest(IngestSpec(out_dir=str(tmp_path / "out"), users=300, domains=2, warmup=False), spark=spark)
    d = json.loads((tmp_path / "out" / "ingest.json").read_text())
    crossrec, plain, floor = d["records"]
    assert [r["system"] for r in d["records"]] == ["crossrec", "plain_copy", "delta_floor"]
    assert crossrec["unit"] == plain["unit"] == floor["unit"] == "rows/s"
    assert d["crossrec_vs_floor"] == pytest.approx(crossrec["value"] / floor["value"])
    assert crossrec["value"] > 0 and plain["value"] > 0 and floor["value"] > 0
    assert crossrec["rows"] == plain["rows"] == floor["rows"], "all three read the same raw rows"
    assert d["ratio"] == pytest.approx(crossrec["value"] / plain["value"])
    assert d["floor_ratio"] == pytest.approx(floor["value"] / plain["value"])
    assert (tmp_path / "out" / "two-layers" / "silver").is_dir(), "the floor wrote its second Delta layer"


@pytest.mark.spark
@pytest.mark.ray
@pytest.mark.slow
def test_training_bench_reports_the_worker_count_and_the_encoder(scored_lake, tmp_path):
    """On the session's prepared lake (--lake-root: the bench's own generate -> prepare is the same jobs); the lake
    is only read: models and Ray storage go under --out. One worker count (2): each count is a run of its own,
    and one worker's run is the same loop (it runs in the Airflow and quality tests)."""
    pytest.importorskip("torch")
    from crossrec.bench.training import TrainingSpec, run_training
    from crossrec.io.readers import read_table

    lake = scored_lake["lake"]
    before = sorted(p.name for p in (lake / "models").iterdir())
    run_training(TrainingSpec(out_dir=str(tmp_path / "out"), lake_root=str(lake), epochs=1, encoder_items=64,
                              workers=(2,)))
    d = json.loads((tmp_path / "out" / "training.json").read_text())
    two, bare, enc = d["records"]
    assert two["system"] == "crossrec" and two["stage"] == "train 2 workers" and two["workers"] == 2
    assert d["speedup"] == {"2": 1.0}
    # the roofline trains the same windows once per epoch, on the threads of one worker, in one process
    assert bare["system"] == "torch" and bare["unit"] == "samples/s" and bare["value"] > 0 and bare["threads"] == 1
    assert bare["samples"] == two["train_windows"]
    assert d["share_of_torch"] == {"2": pytest.approx(two["value"] / bare["value"])}
    assert "of the bare PyTorch loop's samples/s" in (tmp_path / "out" / "training.md").read_text()
    assert two["value"] > 0 and 0 <= two["data_share"] <= 1 and two["epoch_s"] > 0
    assert enc["unit"] == "items/s" and enc["items"] == 64 and enc["value"] > 0
    users = read_table(str(lake), "gold.user_sequences", columns=["user_id"]).user_id.nunique()
    assert two["users"] == d["users"] == users and d["domains"] == 2
    assert sorted(p.name for p in (lake / "models").iterdir()) == before, "the bench wrote no model into the lake"
    assert (tmp_path / "out" / "training.md").is_file() and (tmp_path / "out" / "training.png").is_file()


@pytest.mark.spark
@pytest.mark.ray
@pytest.mark.slow
def test_training_bench_times_each_loss_to_the_first_ones_best_validation_ndcg(scored_lake, tmp_path):
    """--losses: one training per loss (no refit, no terms), each epoch's validation NDCG@10 and seconds from its
    metrics.json; the first loss's best is the target, so it reaches it at its best epoch."""
    pytest.importorskip("torch")
    from crossrec.bench.training import TrainingSpec, run_training

    lake = scored_lake["lake"]
    d = run_training(TrainingSpec(out_dir=str(tmp_path / "out"), lake_root=str(lake), epochs=1, workers=(2,),
                                  losses=("softmax", "sampled")))
    assert json.loads(json.dumps(d)) == json.loads((tmp_path / "out" / "training.json").read_text())
    soft, sampled = d["records"]
    assert (soft["loss"], sampled["loss"]) == ("softmax", "sampled") and soft["unit"] == sampled["unit"] == "s"
    ttq = d["time_to_target"]
    assert ttq["target"] == soft["best_valid_ndcg"] > 0
    assert soft["value"] == soft["train_s"] == soft["curve"][0][0] > 0 and soft["epochs_to_target"] == 1
    assert ttq["losses"]["softmax"]["ratio"] == 1.0
    for loss in ("softmax", "sampled"):
        metrics = json.loads(next((tmp_path / "out" / f"models-{loss}").rglob("metrics.json")).read_text())
        assert metrics["model"]["loss"] == loss and metrics["refit"] is None
        h = metrics["history"][0]
        assert h["epoch_valid_s"] > 0 and ttq["losses"][loss]["curve"] == [
            [round(h["epoch_train_s"] + h["epoch_valid_s"], 1), round(h["valid_ndcg@10"], 5)]]
    reached = sampled["best_valid_ndcg"] >= ttq["target"]
    assert (sampled["value"] is not None) == reached
    assert "| softmax |" in (tmp_path / "out" / "training.md").read_text()


def test_time_to_target_reads_the_first_epoch_at_or_above_the_reference_best():
    from crossrec.bench.training import time_to_target

    soft = [{"epoch": i, "epoch_train_s": 100.0, "epoch_valid_s": 10.0, "valid_ndcg@10": v} for i, v in
            enumerate([.02, .03, .04, .039])]
    sampled = [{"epoch": i, "epoch_train_s": 30.0, "epoch_valid_s": 10.0, "valid_ndcg@10": v} for i, v in
               enumerate([.035, .041, .045])]
    never = [{"epoch": 0, "epoch_train_s": 5.0, "valid_ndcg@10": .01}]
    r = time_to_target({"softmax": soft, "sampled": sampled, "slow": never})
    assert r["target"] == .04
    assert r["losses"]["softmax"]["time_to_target"] == 330.0 and r["losses"]["softmax"]["epochs_to_target"] == 3
    assert r["losses"]["sampled"]["time_to_target"] == 80.0 and r["losses"]["sampled"]["epochs_to_target"] == 2
    assert r["losses"]["sampled"]["ratio"] == pytest.approx(80 / 330, abs=1e-3)
    assert r["losses"]["sampled"]["best"] == .045 and r["losses"]["sampled"]["best_epoch"] == 2
    assert r["losses"]["sampled"]["curve"] == [[40.0, .035], [80.0, .041], [120.0, .045]]
    assert r["losses"]["slow"]["time_to_target"] is None and r["losses"]["slow"]["ratio"] is None
    assert r["losses"]["slow"]["train_s"] == 5.0  # a history without validation seconds counts its training alone


def test_loss_step_costs_time_both_losses_and_the_crossover_needs_every_larger_size_cheaper():
    pytest.importorskip("torch")
    from crossrec.bench.training import crossover, loss_step_costs

    r = loss_step_costs([40, 80], threads=1, batch_size=4, seq_len=6, n_negatives=16, steps=1)
    assert [(x["items_per_domain"], x["loss"]) for x in r] == [(40, "softmax"), (40, "sampled"), (80, "softmax"),
                                                               (80, "sampled")]
    assert all(x["unit"] == "ms/step" and x["value"] > 0 and x["batch"] == [4, 6] for x in r)

    def rec(n, soft, sampled):
        return [{"items_per_domain": n, "loss": "softmax", "value": soft}, {"items_per_domain": n, "loss": "sampled",
                                                                            "value": sampled}]
    assert crossover(rec(1000, 5, 9) + rec(4000, 9, 8) + rec(16000, 30, 9)) == 4000
    assert crossover(rec(1000, 5, 4) + rec(4000, 9, 10) + rec(16000, 30, 9)) == 16000  # cheaper at 1,000 by chance
    assert crossover(rec(1000, 5, 9) + rec(4000, 9, 10)) is None


def test_training_bench_speedups_are_over_the_smallest_worker_count():
    from crossrec.bench.training import speedups

    runs = [{"workers": 4, "value": 300.0}, {"workers": 1, "value": 100.0}, {"workers": 2, "value": 180.0}]
    assert speedups(runs) == {1: 1.0, 2: 1.8, 4: 3.0}
    assert speedups([{"workers": 2, "value": 50.0}]) == {2: 1.0}


def test_training_bench_refuses_a_lake_without_gold_tables_and_bad_worker_counts(tmp_path, capfd):
    from crossrec.bench.quality import BenchError
    from crossrec.bench.training import TrainingSpec, run_training

    with pytest.raises(BenchError, match="has no gold.user_sequences, gold.item_index, gold.item_embeddings, silver.items"):
        run_training(TrainingSpec(out_dir=str(tmp_path / "out"), lake_root=str(tmp_path / "empty")))
    for workers in ((), (0, 1), (2, 2)):
        with pytest.raises(BenchError, match="--workers: distinct worker counts of 1 or more"):
            run_training(TrainingSpec(out_dir=str(tmp_path / "out"), lake_root=str(tmp_path / "empty"), workers=workers))
    for losses in (("softmax",), ("softmax", "softmax"), ("softmax", "hinge")):
        with pytest.raises(BenchError, match="--losses: two or more distinct losses of softmax, sampled"):
            run_training(TrainingSpec(out_dir=str(tmp_path / "out"), lake_root=str(tmp_path / "empty"), losses=losses))
    with pytest.raises(BenchError, match="--catalog-sizes: items per domain, each 1 or more"):
        run_training(TrainingSpec(out_dir=str(tmp_path / "out"), lake_root=str(tmp_path / "empty"), catalog_sizes=(0,)))
    from crossrec.cli.main import main

    assert main(["bench", "training", "--out", str(tmp_path / "out"), "--workers", "1,x"]) == 1
    assert "--workers: comma-separated integers" in capfd.readouterr().err
    assert main(["bench", "scale", "--out", str(tmp_path / "out"), "--users", "10000,1e5"]) == 1
    assert "--users: comma-separated integers, e.g. 10000,100000; got '10000,1e5'" in capfd.readouterr().err


def test_training_bench_exits_1_with_the_message_of_a_refused_worker_group(tmp_path, monkeypatch, capfd):
    import crossrec.bench.training
    from crossrec.cli.main import main
    from crossrec.io.config import ConfigError

    def refuse(spec):  # what train() raises for more workers than the local Ray instance has CPUs
        raise ConfigError(f"{spec.workers[-1]} worker(s) x 1 CPU need 8 CPU(s); the Ray instance has 2")

    monkeypatch.setattr(crossrec.bench.training, "run_training", refuse)
    assert main(["bench", "training", "--out", str(tmp_path / "out"), "--workers", "1,8"]) == 1
    assert "bench training: 8 worker(s) x 1 CPU need 8 CPU(s); the Ray instance has 2" in capfd.readouterr().err
