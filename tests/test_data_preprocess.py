"""`dermt2im preprocess` end to end: the real HAM10000 and ISIC samples at 512 px (one run each, shared by
the tests of this module), resumability, bad input, the phantom-folder path the demo takes, and the test-split
exclusion that later stages enforce."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from dermt2im_hub.cli import main
from dermt2im_hub.config import load_config
from dermt2im_hub.data.config import DataConfig
from dermt2im_hub.data.preprocess import JOURNAL_NAME, run_preprocess
from dermt2im_hub.manifest import read_manifest
from dermt2im_hub.records import (
    TestExclusion,
    TestLeakageError,
    assert_no_test_images,
    find_exclusion,
    read_records,
)

MALIGNANT_DX = {"mel", "bcc", "akiec"}


def _cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _sub(shared_data: Path, name: str) -> Path:
    path = shared_data / name
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the real samples in ../shared/data/{name}")
    return path


def _ham_args(images: Path, metadata: Path, output: Path) -> list:
    return ["preprocess", "--no-progress", "--source", "ham10000", "--images", images, "--metadata", metadata,
            "--output", output]


@pytest.fixture(scope="module")
def ham_run(shared_data, tmp_path_factory):
    """The 42 real HAM10000 images (linked, not copied) plus two broken files named by the metadata: a
    truncated JPEG and random bytes. Preprocessed once at 512 px, then run again unchanged."""
    sample = _sub(shared_data, "ham10000-sample")
    root = tmp_path_factory.mktemp("ham")
    images = root / "images"
    images.mkdir()
    for path in sorted((sample / "images").glob("*.jpg")):
        (images / path.name).symlink_to(path.resolve())
    whole = (sample / "images" / "ISIC_0024306.jpg").read_bytes()
    (images / "ISIC_0027419.jpg").write_bytes(whole[: len(whole) // 2])  # a real id, a cut-off file
    (images / "ISIC_0025030.jpg").write_bytes(os.urandom(4096))  # a real id, not an image at all
    output = root / "out"
    args = _ham_args(images, sample / "HAM10000_metadata.csv", output)
    first = _cli(*args)
    mtimes = {p: p.stat().st_mtime_ns for p in output.rglob("*.png")}
    second = _cli(*args)
    return {"output": output, "first": first, "second": second, "mtimes": mtimes, "sample": sample}


@pytest.fixture(scope="module")
def isic_run(shared_data, tmp_path_factory):
    """The 34 real ISIC Archive images with their JSON records, preprocessed once at 512 px."""
    folder = _sub(shared_data, "isic-sample") / "images"
    output = tmp_path_factory.mktemp("isic") / "out"
    result = _cli("preprocess", "--no-progress", "--source", "isic", "--images", folder, "--metadata", folder,
                  "--output", output)
    return {"output": output, "result": result, "folder": folder}


def _check_image_folder(output: Path, count: int, size: int = 512) -> list:
    records = read_records(output)
    assert len(records) == count
    assert len(list(output.glob("*/*.png"))) == count  # no stray images beside the listed ones
    for record in records:
        path = output / record.file_name
        assert record.file_name == f"{record.label}/{record.image_id}.png"
        with Image.open(path) as image:
            assert image.size == (size, size) and image.mode == "RGB" and image.format == "PNG"
        assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert record.split in ("train", "validation", "test")
        assert record.prompt == f"a dermoscopic image of a {record.label} skin lesion"
        assert (record.width, record.height) == (size, size) and record.original_width >= record.original_height
        assert record.hair_fraction_before is not None and record.hair_fraction_after <= record.hair_fraction_before
    manifest = read_manifest(output)
    assert manifest["stage"] == "preprocess" and manifest["status"] == "complete"
    assert manifest["outputs"]["num_images"] == count and manifest["inputs"]["images"]["sha256"]
    assert load_config(DataConfig, output / "config.yaml") == load_config(DataConfig, None, manifest["config"])
    exclusion = TestExclusion.load(output / "test_exclusion.json")
    assert exclusion.image_ids == {r.image_id for r in records if r.split == "test"} and exclusion.image_ids
    return records


def test_ham_sample_preprocessed_to_512_with_metadata_report_and_manifest(ham_run):
    code, out, err = ham_run["first"]
    assert code == 0, err
    assert "42 image(s)" in out and "truncated 1" in out and "unreadable 1" in out
    records = _check_image_folder(ham_run["output"], 42)
    for record in records:
        assert record.source == "ham10000" and record.lesion_id.startswith("HAM_")
        assert record.label == ("malignant" if record.extra["dx"] in MALIGNANT_DX else "benign")
    assert sum(r.label == "malignant" for r in records) == 17


def test_corrupted_inputs_are_reported_not_fatal(ham_run):
    report = json.loads((ham_run["output"] / "report.json").read_text())
    assert report["skipped"]["truncated"] == 1 and report["skipped"]["unreadable"] == 1
    assert report["examples"]["truncated"][0]["image_id"] == "ISIC_0027419"
    assert report["examples"]["unreadable"][0]["image_id"] == "ISIC_0025030"
    assert report["skipped"]["missing_image"] == 10015 - 44
    assert report["counts"]["images"] == 42 and report["reasons"]["truncated"]


def test_second_run_does_no_work(ham_run):
    code, out, _ = ham_run["second"]
    assert code == 0 and "processed 0, reused 44" in out
    output = ham_run["output"]
    assert {p: p.stat().st_mtime_ns for p in output.rglob("*.png")} == ham_run["mtimes"]
    report = json.loads((output / "report.json").read_text())
    assert report["counts"]["processed"] == 0 and report["skipped"]["truncated"] == 1  # still reported
    assert read_manifest(output)["extra"]["processed"] == 0


def test_ham_split_is_lesion_disjoint(ham_run):
    records = read_records(ham_run["output"])
    split_of_lesion: dict[str, set[str]] = {}
    for record in records:
        split_of_lesion.setdefault(record.lesion_id, set()).add(record.split)
    assert all(len(splits) == 1 for splits in split_of_lesion.values())
    assert {r.split for r in records} == {"train", "validation", "test"}


def test_training_stages_refuse_the_test_split(ham_run):
    output = ham_run["output"]
    records = read_records(output)
    exclusion = TestExclusion.load(find_exclusion(output))
    with pytest.raises(TestLeakageError, match="held-out test split"):
        assert_no_test_images(output, records, exclusion)
    train = [r for r in records if r.split != "test"]
    assert assert_no_test_images(output, train, exclusion) == len(train)
    # a test image copied under a new name and id is still caught by its bytes
    test_record = next(r for r in records if r.split == "test")
    disguised = type(test_record)(**{**test_record.to_dict(), "image_id": "renamed", "lesion_id": "L-new"})
    with pytest.raises(TestLeakageError, match="same bytes"):
        assert_no_test_images(output, [disguised], exclusion)


def test_isic_sample_gets_json_labels_at_512(isic_run):
    code, out, err = isic_run["result"]
    assert code == 0, err
    records = _check_image_folder(isic_run["output"], 34)
    for record in records:
        data = json.loads((isic_run["folder"] / f"{record.image_id}.json").read_text())
        assert record.label == data["meta"]["clinical"]["benign_malignant"]
        assert record.diagnosis == data["meta"]["clinical"]["diagnosis"] and record.source == "isic"
        assert (record.original_width, record.original_height) == (data["meta"]["acquisition"]["pixelsX"],
                                                                   data["meta"]["acquisition"]["pixelsY"])
    # heavy hair on ISIC_0000285 and ISIC_0000206 (SOURCE.md) is mostly gone
    by_id = {r.image_id: r for r in records}
    for image_id in ("ISIC_0000285", "ISIC_0000206"):
        assert by_id[image_id].hair_fraction_after < 0.25 * by_id[image_id].hair_fraction_before


# ---------------------------------------------------------------- the demo path: phantoms -> folder source


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from dermt2im_hub.testing.phantoms import PhantomConfig, make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("phantoms"), PhantomConfig(num_images=32, size=128, seed=0),
                         progress=False)


def test_phantom_folder_is_preprocessed_keeping_ids_and_extra(phantoms, tmp_path):
    output = tmp_path / "data"
    code, out, err = _cli("preprocess", "--no-progress", "--source", "folder", "--images", phantoms,
                          "--output", output, "--size", "64")
    assert code == 0, err
    assert f"card: {output / 'README.md'}" in out and (output / "README.md").is_file()
    records = _check_image_folder(output, 32, size=64)
    originals = {r.image_id: r for r in read_records(phantoms)}
    for record in records:
        original = originals[record.image_id]
        assert (record.label, record.lesion_id, record.source) == (original.label, original.lesion_id, "phantom")
        assert record.extra["skin_tone"] == original.extra["skin_tone"]
    assert sum(r.label == "benign" for r in records) == 16


def test_limit_resume_and_settings_changes(phantoms, tmp_path):
    base = dict(source="folder", images=str(phantoms), output=str(tmp_path / "data"), size=32, num_workers=1)
    config = load_config(DataConfig, None, {**base, "limit_per_class": 4})
    first = run_preprocess(config, progress=False)
    assert first.processed == 8 and sorted(r.label for r in first.records) == ["benign"] * 4 + ["malignant"] * 4
    again = run_preprocess(config, progress=False)
    assert (again.processed, again.reused) == (0, 8)
    assert [r.image_id for r in again.records] == [r.image_id for r in first.records]  # seeded pick
    victim = tmp_path / "data" / first.records[0].file_name
    victim.unlink()  # as if killed before this image was written
    assert run_preprocess(config, progress=False).processed == 1 and victim.is_file()
    bigger = run_preprocess(load_config(DataConfig, None, {**base, "limit_per_class": 4, "size": 48}),
                            progress=False)
    assert bigger.processed == 8  # another size is other pixels: everything is redone
    fewer = run_preprocess(load_config(DataConfig, None, {**base, "limit_per_class": 2, "size": 48}),
                           progress=False)
    assert len(fewer.records) == 4 and len(list((tmp_path / "data").glob("*/*.png"))) == 4  # stale ones removed
    journal = [json.loads(line) for line in (tmp_path / "data" / JOURNAL_NAME).read_text().splitlines()]
    assert len(journal) == 4


def test_identical_files_under_two_ids_keep_one(phantoms, tmp_path):
    source = tmp_path / "in"
    for rel in ("benign/a.png", "benign/b.png", "malignant/c.png"):
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
    first = sorted(phantoms.glob("benign/*.png"))[0]
    (source / "benign/a.png").write_bytes(first.read_bytes())
    (source / "benign/b.png").write_bytes(first.read_bytes())
    (source / "malignant/c.png").write_bytes(sorted(phantoms.glob("malignant/*.png"))[0].read_bytes())
    config = load_config(DataConfig, None, dict(source="folder", images=str(source), output=str(tmp_path / "o"),
                                                size=32, num_workers=1))
    result = run_preprocess(config, progress=False)
    assert [r.image_id for r in result.records] == ["a", "c"]
    assert result.report.skipped["duplicate_content"] == 1 and not (tmp_path / "o/benign/b.png").exists()
    assert any("no lesion or patient ids" in note for note in result.report.notes)  # a split-leak warning
    assert run_preprocess(config, progress=False).processed == 0


def test_nothing_usable_exits_non_zero(tmp_path):
    (tmp_path / "in" / "benign").mkdir(parents=True)
    (tmp_path / "in" / "benign" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, out, _ = _cli("preprocess", "--no-progress", "--source", "folder", "--images", tmp_path / "in",
                        "--output", tmp_path / "out")
    assert code == 1 and "no usable image" in out
    assert json.loads((tmp_path / "out" / "report.json").read_text())["skipped"] == {"unreadable": 1}
    assert read_manifest(tmp_path / "out")["status"] == "failed"


def test_nothing_usable_says_what_to_check(tmp_path, shared_data):
    flat = tmp_path / "flat"  # images not in benign/ and malignant/
    flat.mkdir()
    Image.new("RGB", (160, 160), (180, 120, 100)).save(flat / "a.png")
    code, out, _ = _cli("preprocess", "--no-progress", "--source", "folder", "--images", flat,
                        "--output", tmp_path / "o1")
    assert code == 1 and "--source folder reads" in out and "benign/" in out
    isic = _sub(shared_data, "isic-sample") / "images"  # 2016-era ids against the 2020 ground truth
    truth = _sub(shared_data, "isic-ground-truth") / "ISIC_2020_Training_GroundTruth.csv"
    code, out, _ = _cli("preprocess", "--no-progress", "--source", "isic", "--images", isic, "--metadata", truth,
                        "--output", tmp_path / "o2")
    assert code == 1 and "come from the same release" in out


def test_help_prints_percent_signs(capsys):
    with pytest.raises(SystemExit):
        main(["preprocess", "--help"])
    assert "files about 10% larger) (default: 3)" in capsys.readouterr().out


def test_user_errors_exit_2_without_traceback(tmp_path, phantoms):
    (tmp_path / "in").mkdir()
    code, _, err = _cli("preprocess", "--source", "ham10000", "--images", tmp_path / "in", "--output", tmp_path / "o")
    assert code == 2 and "HAM10000_metadata.csv" in err and "Traceback" not in err
    code, _, err = _cli("preprocess", "--source", "folder", "--images", phantoms, "--output", phantoms / "sub")
    assert code == 2 and "inside the input folder" in err
    code, _, err = _cli("preprocess", "--source", "nope", "--images", phantoms, "--output", tmp_path / "o")
    assert code == 2 and "source must be one of" in err
    code, _, err = _cli("preprocess", "--images", phantoms, "--output", tmp_path / "o", "--set",
                        "split_fractions=[0.5, 0.5, 0.5]")
    assert code == 2 and "add up to 1" in err
    assert not (tmp_path / "o").exists()
    (tmp_path / "a_file").write_text("")
    code, _, err = _cli("preprocess", "--images", phantoms, "--output", tmp_path / "a_file", "--no-progress")
    assert code == 2 and "a file is where a folder is expected" in err and "Traceback" not in err


def test_recipe_sections_load(tmp_path):
    root = Path(__file__).resolve().parents[1] / "configs"
    paper = load_config(DataConfig, root / "paper.yaml", section="data")
    assert paper.size == 512 and paper.hair_removal
    # the paper trains on 1,400 images per class: the limit applies before the split
    assert round(paper.limit_per_class * paper.split_fractions[0]) == 1400
    demo = load_config(DataConfig, root / "demo.yaml", section="data")
    assert demo.source == "folder" and demo.size <= 128


def test_an_interrupted_run_keeps_finished_images_and_resumes(phantoms, tmp_path, monkeypatch):
    import dermt2im_hub.data.preprocess as preprocess

    config = load_config(DataConfig, None, dict(source="folder", images=str(phantoms), output=str(tmp_path / "o"),
                                                size=32, num_workers=1, limit_per_class=3))
    real = preprocess.process_image
    calls = []

    def interrupted_on_third(task):
        calls.append(task.image_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(preprocess, "process_image", interrupted_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_preprocess(config, progress=False)
    assert read_manifest(tmp_path / "o")["status"] == "interrupted"
    assert not (tmp_path / "o" / "metadata.jsonl").exists()
    monkeypatch.setattr(preprocess, "process_image", real)
    resumed = run_preprocess(config, progress=False)
    assert (resumed.processed, resumed.reused, len(resumed.records)) == (4, 2, 6)
    assert read_manifest(tmp_path / "o")["status"] == "complete"


def test_a_ham_id_inside_an_isic_source_is_dropped_before_any_training(shared_data, tmp_path):
    """ISIC 2019's ground truth lists HAM10000's images under their ISIC_ ids. With HAM10000 as the unseen test
    source (exclude_sources: its metadata CSV), those rows are dropped at preprocessing, counted in the report
    and manifest, and never reach metadata.jsonl (what the LoRA and the classifiers train on); a second pass
    with the preprocessed HAM folder as the list catches the same images by id and bytes."""
    ham, isic = _sub(shared_data, "ham10000-sample"), _sub(shared_data, "isic-sample")
    ground_truth = _sub(shared_data, "isic-ground-truth") / "ISIC_2019_Training_GroundTruth.csv"
    images = tmp_path / "images"
    images.mkdir()
    ham_images = sorted((ham / "images").glob("*.jpg"))[:3]
    for path in ham_images + sorted((isic / "images").glob("*.jpg"))[:3]:
        (images / path.name).symlink_to(path)
    ham_ids = {p.stem for p in ham_images}
    settings = {"source": "isic", "images": str(images), "metadata": [str(ground_truth)], "size": 64,
                "hair_removal": False, "split_fractions": [0.5, 0.0, 0.5]}

    plain = run_preprocess(load_config(DataConfig, overrides={**settings, "output": str(tmp_path / "plain")}),
                           progress=False)
    assert ham_ids <= {r.image_id for r in plain.records}  # without the list, HAM images would train the LoRA

    excluded = run_preprocess(load_config(DataConfig, overrides={
        **settings, "output": str(tmp_path / "isic"), "exclude_sources": [str(ham / "HAM10000_metadata.csv")]}),
        progress=False)
    kept = {r.image_id for r in excluded.records}
    assert kept and not kept & ham_ids and len(kept) == 3
    assert excluded.report.skipped["in_test_source"] == 3
    assert read_manifest(tmp_path / "isic")["extra"]["excluded_test_source_rows"] == 3
    written = [json.loads(line)["image_id"] for line in (tmp_path / "isic" / "metadata.jsonl").open()]
    assert not set(written) & ham_ids

    # the preprocessed HAM folder as the list: its ids (and input-file hashes) reach the ISIC source's rows
    by_folder = run_preprocess(load_config(DataConfig, overrides={
        **settings, "output": str(tmp_path / "isic-2"), "exclude_sources": [str(tmp_path / "plain")]}),
        progress=False)
    assert not by_folder.records and by_folder.report.skipped["in_test_source"] == 6


def test_dermt2im_run_excludes_the_test_source_from_the_others_and_the_lora(tmp_path):
    """paper.yaml: HAM10000 is test_only, so it is preprocessed first, the ISIC source gets its metadata CSV and
    folder as exclude_sources, and the LoRA's exclusion list holds every HAM image plus each source's test split."""
    from dermt2im_hub.pipeline.config import RunConfig
    from dermt2im_hub.pipeline.stages import RunLayout, merged_exclusion, preprocess_specs, train_spec
    from dermt2im_hub.records import ImageRecord, TestExclusion, write_records

    recipe = Path(__file__).resolve().parents[1] / "configs" / "paper.yaml"
    run = load_config(RunConfig, recipe, section="run")
    layout = RunLayout(tmp_path / "run")
    specs = preprocess_specs(recipe, run, layout)
    assert [s.name for s in specs] == ["preprocess:ham10000", "preprocess:isic"]
    ham, isic = specs[0].config, specs[1].config
    assert not ham.exclude_sources
    assert str(layout.data("ham10000")) in isic.exclude_sources
    assert ham.limit_per_class == 227 and isic.limit_per_class == 2000

    def record(image_id: str, split: str, lesion: str) -> ImageRecord:
        return ImageRecord(file_name=f"benign/{image_id}.png", image_id=image_id, label="benign", source="x",
                           split=split, lesion_id=lesion, sha256=image_id * 2)

    write_records(layout.data("ham10000"), [record("ISIC_0024306", "train", "HAM_1"), record("ISIC_1", "test", "HAM_2")])
    isic_folder = layout.data("isic")
    TestExclusion.from_records([record("ISIC_9", "test", "L9")]).save(isic_folder / "test_exclusion.json")
    spec = train_spec(recipe, run, layout)
    merged = merged_exclusion(spec.notes["sources"], Path(spec.config.test_exclusion))
    assert {"ISIC_0024306", "ISIC_1", "ISIC_9"} <= merged.image_ids and "HAM_1" in merged.lesion_ids
    assert TestExclusion.load(spec.config.test_exclusion).image_ids == merged.image_ids


def test_isic_2020_without_its_duplicates_list_is_said(shared_data):
    from dermt2im_hub.data.collect import collect_records
    from dermt2im_hub.data.report import Report

    truth = _sub(shared_data, "isic-ground-truth")
    images = _sub(shared_data, "isic-sample") / "images"
    notes = []
    for extra in ([], [str(truth / "ISIC_2020_Training_Duplicates.csv")]):
        report = Report()
        config = load_config(DataConfig, overrides={"source": "isic", "images": str(images), "metadata": [
            str(truth / "ISIC_2020_Training_GroundTruth.csv"), *extra]})
        collect_records(config, report)
        notes.append(any("without ISIC_2020_Training_Duplicates.csv" in n for n in report.notes))
    assert notes == [True, False]
