"""The classifier benchmark end to end on tiny random-init models: phantom images plus the real ISIC and
HAM10000 samples in ../shared/data as `datasets` datasets with the builder's features; the leaderboard and
its Hub metadata; leakage refusal; missing synthetic data; a real two-process `accelerate launch`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dermt2im_hub.config import ConfigError, load_config
from dermt2im_hub.evaluation.config import EvaluationConfig
from dermt2im_hub.labels import CLASS_NAMES, binary_label
from dermt2im_hub.utils.launch import free_local_port

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODELS = ["vit_tiny_patch16_224", "mobilenetv2_050"]


# ---------------------------------------------------------------------------------------------- datasets


def _dataset(rows: list[dict], config_name: str):
    """A datasets.Dataset with exactly the builder's features for `config_name` (real or synthetic)."""
    import datasets

    from dermt2im_hub.dataset.schema import features_for

    features = features_for(config_name)
    columns = {}
    for name, feature in features.items():
        empty = [] if isinstance(feature, datasets.List) else None
        columns[name] = [row.get(name, empty) for row in rows]
    return datasets.Dataset.from_dict(columns, features=features)


def _isic_rows(shared: Path) -> list[dict]:
    rows = []
    with open(shared / "isic-sample" / "metadata.csv", encoding="utf-8") as handle:
        for r in csv.DictReader(handle):
            rows.append({"image": str(shared / "isic-sample" / "images" / f"{r['name']}.jpg"),
                         "label": r["benign_malignant"], "image_id": r["name"], "source": "isic",
                         "diagnosis": r["diagnosis"], "sex": r["sex"] or None,
                         "age": float(r["age_approx"]) if r["age_approx"] else None})
    return rows


def _ham_rows(shared: Path) -> list[dict]:
    rows = []
    with open(shared / "ham10000-sample" / "metadata.csv", encoding="utf-8") as handle:
        for r in csv.DictReader(handle):
            rows.append({"image": str(shared / "ham10000-sample" / "images" / f"{r['image_id']}.jpg"),
                         "label": binary_label(r["dx"]), "image_id": r["image_id"], "lesion_id": r["lesion_id"],
                         "source": "ham10000", "diagnosis": r["dx"], "sex": r["sex"],
                         "age": float(r["age"]) if r["age"] else None, "site": r["localization"]})
    return rows


def _phantom_rows(folder: Path) -> list[dict]:
    from dermt2im_hub.records import read_records

    return [{"image": str(folder / r.file_name), "label": r.label, "image_id": r.image_id, "lesion_id": r.lesion_id,
             "source": "phantom", "diagnosis": r.diagnosis, "sha256": r.sha256} for r in read_records(folder)]


def _phantoms(root: Path, name: str, n: int, seed: int) -> Path:
    from dermt2im_hub.testing.phantoms import PhantomConfig, make_phantoms

    return make_phantoms(root / name, PhantomConfig(num_images=n, size=48, seed=seed), progress=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_data):
    """real: train = phantoms + a third of the ISIC/HAM samples, validation = phantoms, test = the rest of the
    samples (HAM split by lesion); synthetic: the authors' published PNGs + phantoms."""
    import datasets

    root = tmp_path_factory.mktemp("evaluation-inputs")
    isic, ham = _isic_rows(shared_data), _ham_rows(shared_data)
    train_lesions = {r["lesion_id"] for r in ham[::3]}
    ham_train = [r for r in ham if r["lesion_id"] in train_lesions]
    ham_test = [r for r in ham if r["lesion_id"] not in train_lesions]
    real = datasets.DatasetDict(
        train=_dataset(_phantom_rows(_phantoms(root, "p-train", 16, 10)) + isic[::3] + ham_train, "real"),
        validation=_dataset(_phantom_rows(_phantoms(root, "p-val", 8, 11)), "real"),
        test=_dataset([r for i, r in enumerate(isic) if i % 3] + ham_test, "real"),
    )
    published = shared_data / "dermt2im-sample"
    synthetic_rows = [{"image": str(p), "label": label, "source": "dermt2im-sample"}
                      for label in CLASS_NAMES for p in sorted((published / label).glob("*.png"))[:6]]
    synthetic_rows += [dict(r, image_id=None, lesion_id=None, source="phantom-synthetic")
                       for r in _phantom_rows(_phantoms(root, "p-syn", 12, 12))]
    return {"real": real, "synthetic": _dataset(synthetic_rows, "synthetic"), "root": root,
            "test_rows": [r for i, r in enumerate(isic) if i % 3] + ham_test}


def _config(output_dir: Path, **overrides) -> EvaluationConfig:
    settings = {"models": TINY_MODELS, "pretrained": False, "image_size": 32, "seeds": [0, 1], "epochs": 1,
                "batch_size": 8, "eval_batch_size": 32, "num_workers": 0, "bootstrap_resamples": 200,
                "arms": ["real", "hybrid"], "shrink_short_mixes": True,  # the samples hold too few synthetic
                "output_dir": str(output_dir), "real": {"path": None},
                "synthetic": {"path": None}}
    settings.update(overrides)
    return load_config(EvaluationConfig, overrides=settings)


@pytest.fixture(scope="module")
def benchmark(inputs, tmp_path_factory):
    from dermt2im_hub.evaluation.benchmark import run_benchmark
    from dermt2im_hub.evaluation.leaderboard import render_leaderboard

    config = _config(tmp_path_factory.mktemp("benchmark"))
    results_dir = run_benchmark(config, real=inputs["real"], synthetic=inputs["synthetic"], progress=False)
    return {"config": config, "results": results_dir, "leaderboard": render_leaderboard(results_dir)}


# ---------------------------------------------------------------------------------------------- end to end


def test_benchmark_writes_one_record_per_run_with_metrics_cis_and_predictions(benchmark, inputs):
    from dermt2im_hub.evaluation.benchmark import read_records
    from dermt2im_hub.evaluation.metrics import METRIC_NAMES

    records = read_records(benchmark["results"])
    assert len(records) == 2 * 2 * 2  # models x (real, hybrid) x seeds
    assert {r["mix"] for r in records} == {"real", "r0.75"}
    test = inputs["real"]["test"]
    for record in records:
        assert [res["test_set"] for res in record["results"]] == ["ISIC", "HAM10000"]
        for result in record["results"]:
            assert set(METRIC_NAMES) <= set(result["metrics"])
            low, high = result["ci"]["accuracy"]
            assert low <= result["metrics"]["accuracy"] <= high
            assert {s["attribute"] for s in result["subgroups"]} >= {"sex", "age_band"}
        assert len(record["predictions"]) == len(test)
        assert all(0.0 <= p["prob_malignant"] <= 1.0 for p in record["predictions"])
        assert record["versions"]["timm"] and record["training"]["epochs_run"] == 1
    hybrid = next(r for r in records if r["mix"] == "r0.75")
    assert hybrid["training_mix"]["synthetic_fraction"] == pytest.approx(0.75, abs=0.05)
    assert hybrid["training_mix"]["synthetic_images"] > 0
    # equal training budgets: whatever the size of its training set, every arm sees the same samples and steps
    real = next(r for r in records if r["mix"] == "real" and r["model"] == hybrid["model"])
    assert hybrid["budget"] == real["budget"] and real["budget"]["steps"] > 0
    assert real["budget"]["samples"] == real["training_mix"]["real_images"]  # epochs: 1
    assert all(r["budget"] == real["budget"] for r in records)
    assert {p["groups"]["sex"] for p in hybrid["predictions"]} - {None}  # subgroups ride along for the CIs


def test_results_folder_is_a_hub_ready_dataset(benchmark):
    import datasets
    from huggingface_hub import metadata_load

    from dermt2im_hub.manifest import read_manifest

    results = benchmark["results"]
    assert read_manifest(results)["stage"] == "benchmark"
    metadata = metadata_load(results / "README.md")
    assert [c["config_name"] for c in metadata["configs"]] == ["metrics", "predictions"]
    metrics = datasets.load_dataset(str(results), "metrics", split="train")
    assert len(metrics) == 8 * 2 and "balanced_accuracy_ci_low" in metrics.column_names
    predictions = datasets.load_dataset(str(results), "predictions", split="train")
    assert set(predictions.column_names) >= {"run_id", "image_id", "label", "prob_malignant", "prediction"}


def test_classifier_folders_are_hub_ready_timm_models(benchmark):
    import timm
    import torch
    from huggingface_hub import ModelCard

    from dermt2im_hub.manifest import read_manifest

    folder = Path(benchmark["config"].output_dir) / "classifiers" / "mobilenetv2_050__r0.75__seed1"
    assert (folder / "model.safetensors").is_file()
    assert not any(folder.glob("*.bin")) and not any(folder.glob("*.pt"))
    manifest = read_manifest(folder)
    assert manifest["stage"] == "train_classifier"
    card = manifest["extra"]["card"]
    assert card["model_name"] == "mobilenetv2_050" and card["labels"] == list(CLASS_NAMES)
    assert card["training_mix"]["synthetic_images"] > 0 and card["seed"] == 1
    assert [r["test_set"] for r in card["results"]] == ["ISIC", "HAM10000"]
    assert {"npv", "ppv", "accuracy"} <= set(card["results"][0]["metrics"])  # counts dropped, npv kept
    assert not {"n", "n_malignant", "n_benign"} & set(card["results"][0]["metrics"])
    config = json.loads((folder / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["label_names"] == list(CLASS_NAMES)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    readme = ModelCard.load(folder / "README.md")
    assert readme.data.eval_results and readme.data.library_name == "timm"
    assert "| metric | value | 95% CI |" in readme.text  # the level the run used (default 0.95)
    assert (folder / ".eval_results" / "isic_accuracy.yaml").is_file()


def test_leaderboard_table_plot_and_hub_metadata_parse_back(benchmark, inputs):
    import yaml
    from huggingface_hub import ModelCard, metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from dermt2im_hub.manifest import read_manifest

    board = benchmark["leaderboard"]
    table = (board / "leaderboard.md").read_text()
    assert "Table IV" in table and "ISIC real-only" in table and "HAM10000 hybrid" in table
    # random-init 32 px tiny models are not the paper's setup: never under its names or beside its numbers
    assert "78.89" not in table.split("## Every arm")[0].split("Caveat")[0] and "| MobileNetV2 (" not in table
    assert "not the paper's setup" in table and "random initialisation" in table and "input 32 px" in table
    assert "**Not comparable with the paper:** no model here is the paper's setup" in table
    assert "McNemar" in table and "Holm" in table and " ± " in table
    assert "detectable ≥" in table and ("n.s. (p_Holm" in table or "; p_Holm" in table)
    assert "not whole-image counts" in table and "Training budget:" in table
    n_isic = sum(1 for r in inputs["test_rows"] if r["source"] == "isic")
    assert f"ISIC: ours n = {n_isic}, " in table and "paper n = 659, class balance not reported" in table
    assert "| real / synthetic train images |" in table
    hybrid_row = next(line for line in table.splitlines() if "| r0.75 |" in line and "| ISIC |" in line)
    assert " / 0 |" not in hybrid_row and "| 0.75 | full |" in hybrid_row  # synthetic images counted
    assert (board / "synthetic_fraction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((board / "leaderboard.json").read_text())
    assert all("npv" in s["metrics"] and "n_benign" not in s["metrics"] for s in summary["summaries"])
    assert len(summary["comparisons"]) == 2 * 2  # models x test sets
    for comparison in summary["comparisons"]:
        d = comparison["accuracy"]
        assert d["ci_low"] <= d["difference"] <= d["ci_high"]
        assert 0.0 <= d["p_value"] <= d["p_holm"] <= 1.0 and d["family_size"] == 4 and d["detectable_difference"] > 0
        assert 0.0 <= comparison["mcnemar"]["p_value"] <= comparison["mcnemar"]["p_holm"] <= 1.0
        assert 0.0 <= comparison["mcnemar"]["ensemble_accuracy_arm"] <= 1.0

    index_files = sorted(board.glob("classifiers/*/model-index.md"))
    assert len(index_files) == 2 * 2  # models x mixes
    for path in index_files:
        card = ModelCard.load(path)
        names = {(r.dataset_name, r.metric_type) for r in card.data.eval_results}
        assert {("ISIC", "accuracy"), ("HAM10000", "balanced_accuracy")} <= names
        model_name, results = model_index_to_eval_results(metadata_load(path)["model-index"])
        assert model_name == path.parent.name and all(0.0 <= r.metric_value <= 1.0 for r in results)
    eval_file = board / "classifiers" / "vit_tiny_patch16_224__real" / ".eval_results" / "isic_accuracy.yaml"
    entries = yaml.safe_load(eval_file.read_text())
    assert entries[0]["dataset"]["id"] == "ISIC" and entries[0]["dataset"]["task_id"] == "accuracy"
    assert 0.0 <= entries[0]["value"] <= 100.0 and "2 seed(s)" in entries[0]["notes"]

    manifest = read_manifest(board)
    assert manifest["stage"] == "leaderboard"
    assert set(manifest["extra"]["card"]) >= {"table_markdown", "plot", "paper_table", "runs", "models", "test_sets"}
    assert "Derm-T2IM classifier benchmark results" in (board / "README.md").read_text()


def test_rerun_skips_finished_runs(benchmark, inputs):
    from dermt2im_hub.evaluation.benchmark import RECORDS_DIR, run_benchmark

    records = sorted((benchmark["results"] / RECORDS_DIR).glob("*.json"))
    before = {p.name: p.stat().st_mtime_ns for p in records}
    run_benchmark(benchmark["config"], real=inputs["real"], synthetic=inputs["synthetic"], progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in records} == before


def test_records_of_another_sweep_are_set_aside_not_averaged(benchmark, inputs, tmp_path):
    """Records left by other settings or data (a tampered sweep hash; an r > 0 run with other synthetic data;
    a record from a version that named no sweep) are moved aside with their classifier folders and their runs
    redone; the other runs are skipped; the leaderboard refuses a folder that mixes sweeps."""
    import dataclasses
    import shutil

    from dermt2im_hub.evaluation.benchmark import RECORDS_DIR, run_benchmark
    from dermt2im_hub.evaluation.leaderboard import render_leaderboard

    output = tmp_path / "copy"
    shutil.copytree(Path(benchmark["config"].output_dir), output)
    records = sorted((output / "results" / RECORDS_DIR).glob("*.json"))
    real = [p for p in records if "__real__" in p.name]
    other_sweep, legacy, other_synthetic = real[0], real[1], next(p for p in records if "__r0" in p.name)
    originals = {p: json.loads(p.read_text()) for p in (other_sweep, other_synthetic, legacy)}
    assert len(originals[other_sweep]["sweep_sha256"]) == 64 and originals[other_sweep]["synthetic_sha256"] is None
    assert originals[other_synthetic]["synthetic_sha256"]
    other_sweep.write_text(json.dumps(dict(originals[other_sweep], sweep_sha256="0" * 64)))
    with pytest.raises(ConfigError, match="mixes runs of different settings or data"):
        render_leaderboard(output / "results", output_dir=tmp_path / "board")
    other_synthetic.write_text(json.dumps(dict(originals[other_synthetic], synthetic_sha256="1" * 64)))
    legacy.write_text(json.dumps({k: v for k, v in originals[legacy].items()
                                  if k not in ("sweep_sha256", "synthetic_sha256")}))

    untouched = [p for p in records if p not in originals]
    mtimes = {p.name: p.stat().st_mtime_ns for p in untouched}
    config = dataclasses.replace(benchmark["config"], output_dir=str(output))
    run_benchmark(config, real=inputs["real"], synthetic=inputs["synthetic"], progress=False)
    (batch,) = (output / "records-set-aside").iterdir()
    assert sorted(p.name for p in batch.glob("*.json")) == sorted(p.name for p in originals)  # kept, not deleted
    assert sorted(p.name for p in (batch / "classifiers").iterdir()) == sorted(p.stem for p in originals)
    for path in originals:  # redone with this sweep's hashes
        redone = json.loads(path.read_text())
        assert redone["sweep_sha256"] == originals[path]["sweep_sha256"]
        assert redone["synthetic_sha256"] == originals[path]["synthetic_sha256"]
        assert (output / "classifiers" / path.stem / "model.safetensors").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in untouched} == mtimes  # the other runs were skipped
    render_leaderboard(output / "results", output_dir=tmp_path / "board", bootstrap_resamples=20)


def test_run_hashes_follow_content_not_the_folder_or_file_times(tmp_path):
    """Moving, copying or re-syncing a dataset (or reading it from another mount on another machine) must not
    make finished runs look stale: tables hash ids, labels and image bytes, not paths or mtimes."""
    import os
    import shutil

    import datasets

    from dermt2im_hub.evaluation.data import load_table

    rows = _phantom_rows(_phantoms(tmp_path, "p", 8, 3))
    _dataset(rows, "real").to_parquet(str(tmp_path / "a" / "data" / "train-00000-of-00001.parquet"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    os.utime(tmp_path / "b" / "data" / "train-00000-of-00001.parquet", (1, 1))
    first, moved = (load_table(str(tmp_path / name), "train", "real train") for name in ("a", "b"))
    assert first.origin["content_sha256"] == moved.origin["content_sha256"]
    changed = [dict(r) for r in rows]
    changed[0]["label"] = "malignant" if changed[0]["label"] == "benign" else "benign"
    other = load_table(datasets.DatasetDict(train=_dataset(changed, "real")), "train", "real train")
    assert other.origin["content_sha256"] != first.origin["content_sha256"]


def test_synthetic_pretraining_then_real_fine_tuning_has_the_same_total_budget(inputs, tmp_path):
    """The pretrain_finetune arm trains on every synthetic image, then on the real set, in rounds that add up to
    the real-only arm's budget, and gets the same seed-aware comparison in the leaderboard."""
    from dermt2im_hub.evaluation.benchmark import read_records, run_benchmark
    from dermt2im_hub.evaluation.leaderboard import compare_arms

    config = _config(tmp_path, models=["mobilenetv2_050"], seeds=[0], epochs=2,
                     arms=["real", "pretrain_finetune"])
    results = run_benchmark(config, real=inputs["real"], synthetic=inputs["synthetic"], progress=False)
    records = {r["mix"]: r for r in read_records(results)}
    real, staged = records["real"], records["synthetic-then-real"]
    assert staged["budget"]["samples"] == real["budget"]["samples"] == 2 * real["training_mix"]["real_images"]
    assert [p["phase"] for p in staged["budget"]["phases"]] == ["synthetic", "real"]
    assert [h["phase"] for h in staged["training"]["history"]][0] == "synthetic"
    assert staged["training_mix"]["synthetic_fraction"] == pytest.approx(0.5)
    comparison = compare_arms(list(records.values()))
    assert {c["arm"] for c in comparison} == {"pretrain_finetune"} and not any(c["primary"] for c in comparison)
    assert comparison[0]["accuracy"]["p_holm"] is not None


def test_real_only_first_and_synthetic_arms_later_are_one_sweep(inputs, tmp_path):
    """`arms=[real]` without synthetic data (what the missing-synthetic error suggests), then the hybrid arm
    with it: the real-only records belong to the same sweep and are neither set aside nor retrained."""
    from dermt2im_hub.evaluation.benchmark import RECORDS_DIR, run_benchmark

    common = {"models": TINY_MODELS[:1], "seeds": [0]}
    run_benchmark(_config(tmp_path, arms=["real"], **common), real=inputs["real"], progress=False)
    real_record = next((tmp_path / "results" / RECORDS_DIR).glob("*__real__*.json"))
    before = real_record.stat().st_mtime_ns
    run_benchmark(_config(tmp_path, arms=["real", "hybrid"], **common), real=inputs["real"],
                  synthetic=inputs["synthetic"], progress=False)
    assert real_record.stat().st_mtime_ns == before and not (tmp_path / "records-set-aside").exists()
    assert len(list((tmp_path / "results" / RECORDS_DIR).glob("*.json"))) == 2


def test_table_iv_section_is_the_table_and_note_up_to_the_next_heading():
    from dermt2im_hub.evaluation.leaderboard import TABLE_IV_HEADING, table_iv_section

    text = ("# Derm-T2IM classifier benchmark\n\n" + TABLE_IV_HEADING + "\n\nOurs: mean.\n\n| Model | a |\n|---|---|\n"
            "| ViT | 1 |\n\nTest sets: t: ours n = 3.\n\n## Hybrid − real-only (percentage points)\n\nmore\n")
    section = table_iv_section(text)
    assert section.startswith(TABLE_IV_HEADING) and section.rstrip().endswith("Test sets: t: ours n = 3.")
    assert "| ViT | 1 |" in section and "Hybrid" not in section and "classifier benchmark" not in section
    assert table_iv_section("# nothing here\n") == ""


def test_arms_are_paired_by_image_not_by_label_vector():
    from dermt2im_hub.evaluation.leaderboard import compare_arms

    def record(fraction: float, seed: int, ids: list[str]) -> dict:
        predictions = [{"test_set": "ISIC", "image_id": i, "label": k % 2, "prediction": k % 2,
                        "prob_malignant": 0.9 if k % 2 else 0.1} for k, i in enumerate(ids)]
        return {"model": "m", "mix": "real" if fraction == 0 else "r0.75", "synthetic_fraction": fraction,
                "size_policy": "full", "hybrid_fraction": 0.75,
                "seed": seed, "results": [{"test_set": "ISIC"}], "predictions": predictions}

    same = [record(0.0, 0, ["a", "b", "c", "d"]), record(0.75, 0, ["a", "b", "c", "d"])]
    assert compare_arms(same, n_resamples=10)[0]["n_images"] == 4
    other_images = [record(0.0, 0, ["a", "b", "c", "d"]), record(0.75, 0, ["w", "x", "y", "z"])]
    with pytest.raises(ValueError, match="different ISIC images"):
        compare_arms(other_images, n_resamples=10)


def test_leaderboard_cli(benchmark, run_cli, tmp_path):
    code, out, _ = run_cli("leaderboard", benchmark["results"], "--output", tmp_path / "board",
                           "--bootstrap-resamples", "50")
    assert code == 0 and "leaderboard written" in out
    assert (tmp_path / "board" / "leaderboard.md").is_file()
    # README: it "prints our table in the same layout": the Table IV section and the test-set note, then where the
    # folder is; not the whole file
    table = out.index("laid out like the paper's Table IV")
    assert table < out.index("| Model |") < out.index("Test sets:") < out.index("leaderboard written")
    assert "not the paper's setup" in out and "Every arm" not in out and "Every mix" not in out
    assert "detectable ≥" in out
    for args, message in [(["--confidence", "95"], "within (0, 1)"), (["--bootstrap-resamples", "0"], "at least 1"),
                          (["--output", benchmark["results"]], "stage 'benchmark'")]:  # over another stage
        code, _, err = run_cli("leaderboard", benchmark["results"], *args)
        assert code == 2 and message in err, err


# ---------------------------------------------------------------------------------------------- refusals


def test_training_refuses_a_test_image_in_the_training_mix(inputs):
    import datasets

    from dermt2im_hub.evaluation.benchmark import prepare_data
    from dermt2im_hub.records import TestLeakageError

    real, config = inputs["real"], _config(inputs["root"] / "unused")
    leaked = datasets.concatenate_datasets([real["train"], real["test"].select([0])])
    with pytest.raises(TestLeakageError, match=real["test"][0]["image_id"]):
        prepare_data(config, real=datasets.DatasetDict(train=leaked, validation=real["validation"], test=real["test"]),
                     synthetic=inputs["synthetic"])

    # the same bytes under a synthetic name (e.g. a memorised test image) are caught by their sha256
    copy = dict(inputs["test_rows"][0], source="generated")  # synthetic rows carry no image id
    synthetic = datasets.concatenate_datasets([inputs["synthetic"], _dataset([copy], "synthetic")])
    with pytest.raises(TestLeakageError, match="same bytes"):
        prepare_data(config, real=real, synthetic=synthetic)

    # a HAM10000 training image of a lesion that is in the test set
    lesion = next(v for v in real["test"]["lesion_id"] if v)
    sibling = {"image": real["train"][0]["image"], "label": "benign", "image_id": "other-image",
               "lesion_id": lesion, "source": "ham10000"}
    train = datasets.concatenate_datasets([real["train"], _dataset([sibling], "real")])
    with pytest.raises(TestLeakageError, match=f"lesion {lesion!r}"):
        prepare_data(config, real=datasets.DatasetDict(train=train, validation=real["validation"], test=real["test"]),
                     synthetic=inputs["synthetic"])


def test_real_source_filter_keeps_the_second_source_unseen(inputs, shared_data):
    """paper.yaml trains and stops early on ISIC rows only, so the HAM10000 test rows are an unseen source, as
    in the paper; without the filter HAM10000 training rows would make that column a same-source test."""
    import datasets

    from dermt2im_hub.evaluation.benchmark import prepare_data

    isic, ham = _isic_rows(shared_data), _ham_rows(shared_data)
    train_lesions = {r["lesion_id"] for r in ham[::3]}
    real = datasets.DatasetDict(
        train=_dataset(isic[::6] + [r for r in ham if r["lesion_id"] in train_lesions], "real"),
        validation=_dataset(isic[3::6], "real"),
        test=_dataset(inputs["test_rows"], "real"))
    config = _config(inputs["root"] / "unused", arms=["real"], real={"path": None, "source": "isic"})
    data = prepare_data(config, real=real, needs_synthetic=False)
    assert set(data.real_train.columns["source"]) == {"isic"} and len(data.real_train) == len(isic[::6])
    assert set(data.validation.columns["source"]) == {"isic"}
    assert {spec.name: len(table) for spec, table in data.test_sets} == {
        "ISIC": sum(1 for r in inputs["test_rows"] if r["source"] == "isic"),
        "HAM10000": sum(1 for r in inputs["test_rows"] if r["source"] == "ham10000")}
    unfiltered = prepare_data(_config(inputs["root"] / "unused", arms=["real"]), real=real, needs_synthetic=False)
    assert "ham10000" in set(unfiltered.real_train.columns["source"])
    with pytest.raises(ConfigError, match="real train: split 'train' .* has no rows with source='derm7pt'"):
        prepare_data(_config(inputs["root"] / "unused", arms=["real"], real={"path": None, "source": "derm7pt"}),
                     real=real, needs_synthetic=False)


def test_hybrid_without_synthetic_data_is_a_clear_error(inputs, tmp_path, run_cli):
    from dermt2im_hub.evaluation.benchmark import run_benchmark
    from dermt2im_hub.evaluation.mixes import MissingSyntheticDataError

    config = _config(tmp_path / "out")
    with pytest.raises(MissingSyntheticDataError, match="evaluation.synthetic.path"):
        run_benchmark(config, real=inputs["real"], progress=False)

    real_dir = tmp_path / "real"
    inputs["real"].save_to_disk(str(real_dir))
    code, _, err = run_cli("benchmark", "--real.path", real_dir, "--arms", "real,hybrid",
                           "--output-dir", tmp_path / "cli", "--no-progress")
    assert code == 2 and "synthetic" in err and "Traceback" not in err


def test_missing_inputs_and_weights_are_one_line_errors(tmp_path, run_cli, phantom_dir, monkeypatch):
    from dermt2im_hub.evaluation.train import create_classifier

    common = ["--output-dir", tmp_path / "out", "--no-progress", "--models", "mobilenetv2_050", "--no-pretrained"]
    code, _, err = run_cli("benchmark", "--real.path", tmp_path / "missing", *common[:-3], "--models", "mobilenetv2")
    assert code == 2 and "'mobilenetv2' is not a timm model name" in err, err  # before any data is read
    for real, message in [(tmp_path / "missing", "dataset folder not found"),
                          ("org/not-cached", "could not be fetched from the Hub"),  # the tests run offline
                          (phantom_dir, "dermt2im build-dataset")]:  # an image folder, not a built dataset
        code, _, err = run_cli("benchmark", "--real.path", real, *common)
        assert code == 2 and message in err and "Traceback" not in err, err
    # weights neither cached nor reachable: say how to go on
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match="--no-pretrained"):
        create_classifier("mobilenetv2_050", _config(tmp_path, pretrained=True))


# ---------------------------------------------------------------------------------------------- launch


@pytest.mark.integration
def test_accelerate_launch_two_processes(inputs, tmp_path):
    """`accelerate launch training_scripts/train_classifier.py` as a real 2-process (gloo, CPU) DDP job, sharing
    one decoded-image cache folder."""
    from dermt2im_hub.evaluation.benchmark import read_records

    real_dir = tmp_path / "real"
    inputs["real"].save_to_disk(str(real_dir))
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_local_port()),
               str(REPO_ROOT / "training_scripts" / "train_classifier.py"),
               "--config", str(REPO_ROOT / "configs" / "demo.yaml"), "--real.path", str(real_dir),
               "--test-sets", "[{name: ISIC, source: isic}]", "--models", "mobilenetv2_050", "--seeds", "[0]",
               "--arms", "real", "--epochs", "1", "--batch-size", "4", "--output-dir", str(tmp_path / "out"),
               "--cache-dir", str(tmp_path / "cache"),
               "--no-progress", "--no-leaderboard"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (record,) = read_records(tmp_path / "out" / "results")
    assert record["training"]["num_processes"] == 2  # a real distributed run, not two independent ones
    assert len(record["predictions"]) == sum(1 for s in inputs["real"]["test"]["source"] if s == "isic")
    assert np.isfinite(record["results"][0]["metrics"]["accuracy"])
    assert (tmp_path / "out" / "classifiers" / record["run_id"] / "model.safetensors").is_file()
    # decoded once by the main process (train, validation and test caches), then mapped by the other
    assert len(list((tmp_path / "cache").glob("images-*.npy"))) == 3


def test_reads_the_dataset_stage_parquet_export(tmp_path):
    """A `real` folder written by `dermt2im build-dataset` loads by path with its splits and ids."""
    from dermt2im_hub.dataset.config import DatasetConfig
    from dermt2im_hub.dataset.export import build_dataset
    from dermt2im_hub.evaluation.benchmark import prepare_data
    from dermt2im_hub.utils.files import read_jsonl, write_jsonl

    folder = _phantoms(tmp_path, "real", 16, 3)
    rows = read_jsonl(folder / "metadata.jsonl")
    for i, row in enumerate(rows):
        row.update(split=("train", "train", "validation", "test")[i % 4], patient_id=f"patient-{i}")
    write_jsonl(folder / "metadata.jsonl", rows)
    build_dataset([folder], tmp_path / "dataset", DatasetConfig(config_name="real"), progress=False)
    config = _config(tmp_path / "out", real={"path": str(tmp_path / "dataset")}, arms=["real"],
                     test_sets=[{"name": "phantom-test", "source": "phantom"}])
    data = prepare_data(config, needs_synthetic=False)
    assert (len(data.real_train), len(data.validation)) == (8, 4)
    (_, test), = data.test_sets
    assert len(test) == 4 and test.columns["patient_id"][0].startswith("patient-")
    assert data.training_images_checked == 12
    assert test.origin["input_fingerprint"]["kind"] == "stage_output"
