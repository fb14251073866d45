"""Data stage readers and splits on the real metadata in ../shared/data (no image decoding here)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dermt2im_hub.config import ConfigError
from dermt2im_hub.data.collect import collect_records
from dermt2im_hub.data.config import DataConfig
from dermt2im_hub.data.isic import detect_format, label_counts, read_isic_csv, read_isic_json_folder
from dermt2im_hub.data.report import Report
from dermt2im_hub.data.sources import (
    InputError,
    SourceRecord,
    index_images,
    read_ham10000_metadata,
    read_image_folder,
    safe_file_stem,
)
from dermt2im_hub.data.splits import assign_splits, group_ids, leaking_groups

MALIGNANT_DX = {"mel", "bcc", "akiec"}


def _sub(shared_data: Path, name: str) -> Path:
    path = shared_data / name
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the real samples in ../shared/data/{name}")
    return path


@pytest.fixture(scope="module")
def ham_full(shared_data):
    return read_ham10000_metadata(_sub(shared_data, "ham10000-sample") / "HAM10000_metadata.csv")


# ---------------------------------------------------------------- HAM10000


def test_ham_sample_images_get_the_labels_their_dx_implies(shared_data):
    folder = _sub(shared_data, "ham10000-sample")
    report = Report()
    config = DataConfig(source="ham10000", images=str(folder / "images"),
                        metadata=[str(folder / "HAM10000_metadata.csv")])
    records = collect_records(config, report)
    assert len(records) == 42
    for record in records:
        expected = "malignant" if record.extra["dx"] in MALIGNANT_DX else "benign"
        assert record.label == expected, record
        assert record.lesion_id.startswith("HAM_") and record.path.is_file()
    assert Counter(r.label for r in records) == {"benign": 25, "malignant": 17}
    assert Counter(r.extra["dx"] for r in records) == {"nv": 11, "bcc": 9, "bkl": 7, "mel": 6, "df": 4,
                                                       "vasc": 3, "akiec": 2}
    assert report.skipped == {"missing_image": 10015 - 42}  # full metadata, sample of images


def test_ham_full_metadata_counts(ham_full):
    assert len(ham_full) == 10015
    assert len({r.lesion_id for r in ham_full}) == 7470
    assert Counter(r.extra["dx"] for r in ham_full) == {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514,
                                                        "akiec": 327, "vasc": 142, "df": 115}
    assert label_counts(ham_full) == {"benign": 8061, "malignant": 1954, "excluded": 0}
    first = ham_full[0]
    assert (first.image_id, first.age, first.sex, first.site) == ("ISIC_0027419", 80.0, "male", "scalp")


def test_split_of_full_ham_metadata_is_lesion_disjoint_stratified_and_seeded(ham_full):
    result = assign_splits(ham_full, (0.7, 0.15, 0.15), seed=0)
    assert leaking_groups(ham_full, result.splits) == {}
    lesions_by_split: dict[str, set[str]] = {}
    for record, split in zip(ham_full, result.splits):
        lesions_by_split.setdefault(split, set()).add(record.lesion_id)
    assert not (lesions_by_split["train"] & lesions_by_split["test"])
    assert not (lesions_by_split["validation"] & lesions_by_split["test"])
    sizes = Counter(result.splits)
    for split, share in (("train", 0.7), ("validation", 0.15), ("test", 0.15)):
        assert abs(sizes[split] / len(ham_full) - share) < 0.02, sizes
        malignant = sum(r.label == "malignant" for r, s in zip(ham_full, result.splits) if s == split)
        assert abs(malignant / sizes[split] - 1954 / 10015) < 0.02  # stratified by label
    assert assign_splits(ham_full, (0.7, 0.15, 0.15), seed=0).splits == result.splits
    assert assign_splits(ham_full, (0.7, 0.15, 0.15), seed=1).splits != result.splits


def test_unknown_dx_and_diagnosis_overrides(tmp_path):
    csv = tmp_path / "HAM10000_metadata.csv"
    csv.write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\n"
                   "HAM_1,ISIC_1,akiec,histo,70.0,male,face\nHAM_2,ISIC_2,xyz,histo,,unknown,unknown\n"
                   "HAM_3,ISIC_3,bkl,histo,50.0,female,back\nHAM_3,ISIC_3,bkl,histo,50.0,female,back\n")
    report = Report()
    records = read_ham10000_metadata(csv, report=report)
    assert [r.label for r in records] == ["malignant", None, "benign"]
    assert (records[1].age, records[1].sex, records[1].site) == (None, None, None)
    assert report.skipped == {"duplicate_id": 1}
    overridden = read_ham10000_metadata(csv, {"akiec": "exclude", "benign keratosis": "malignant"})
    assert [r.label for r in overridden] == [None, None, "malignant"]
    images = tmp_path / "images"
    images.mkdir()
    for name in ("ISIC_1", "ISIC_2", "ISIC_9"):
        (images / f"{name}.jpg").write_bytes(b"not decoded by collect")
    report = Report()
    found = collect_records(DataConfig(source="ham10000", images=str(images), metadata=[str(csv)]), report)
    assert [r.image_id for r in found] == ["ISIC_1"]
    assert report.skipped == {"duplicate_id": 1, "unknown_diagnosis": 1, "no_metadata": 1, "missing_image": 1}
    assert "xyz" in report.examples["unknown_diagnosis"][0]["detail"]


def test_ham_reader_rejects_a_file_of_another_format(tmp_path):
    csv = tmp_path / "other.csv"
    csv.write_text("image,MEL,NV\nISIC_1,1.0,0.0\n")
    with pytest.raises(InputError, match="column"):
        read_ham10000_metadata(csv)


# ---------------------------------------------------------------- ISIC


def test_isic_json_records_give_their_own_labels(shared_data):
    folder = _sub(shared_data, "isic-sample") / "images"
    records = read_isic_json_folder(folder)
    assert len(records) == 34
    for record in records:
        data = json.loads((folder / f"{record.image_id}.json").read_text())
        clinical = data["meta"]["clinical"]
        assert record.label == clinical["benign_malignant"]
        assert record.diagnosis == clinical["diagnosis"]
        assert record.age == clinical["age_approx"] and record.sex == clinical["sex"]
    assert Counter(r.label for r in records) == {"benign": 18, "malignant": 16}
    assert Counter(r.diagnosis for r in records) == {"nevus": 18, "melanoma": 16}
    report = Report()
    joined = collect_records(DataConfig(source="isic", metadata=[str(folder)]), report)
    assert len(joined) == 34 and all(r.path.stem == r.image_id for r in joined)
    assert not report.skipped


GROUND_TRUTH = [
    # file, format, rows, benign, malignant
    ("ISIC2016_Task3_Training_GroundTruth.csv", "isic2016", 900, 727, 173),
    ("ISBI2016_ISIC_Part3_Test_GroundTruth.csv", "isic2016", 379, 304, 75),
    ("ISIC-2017_Training_Part3_GroundTruth.csv", "isic2017", 2000, 1626, 374),
    ("ISIC-2017_Validation_Part3_GroundTruth.csv", "isic2017", 150, 120, 30),
    ("ISIC2018_Task3_GroundTruth.csv", "onehot", 10015, 8061, 1954),
    ("ISIC_2019_Training_GroundTruth.csv", "onehot", 25331, 15991, 9340),
    ("ISIC_2020_Training_GroundTruth.csv", "isic2020", 33126, 32542, 584),
]


@pytest.mark.parametrize("name,kind,rows,benign,malignant", GROUND_TRUTH, ids=[g[0] for g in GROUND_TRUTH])
def test_every_ground_truth_format_parses_with_the_published_counts(shared_data, name, kind, rows, benign,
                                                                    malignant):
    table = read_isic_csv(_sub(shared_data, "isic-ground-truth") / name)
    assert table.format == kind and table.has_labels
    assert len(table.records) == rows
    assert len({r.image_id for r in table.records}) == rows
    assert label_counts(table.records) == {"benign": benign, "malignant": malignant, "excluded": 0}


def test_multiclass_ground_truth_keeps_the_diagnosis(shared_data):
    folder = _sub(shared_data, "isic-ground-truth")
    t2017 = read_isic_csv(folder / "ISIC-2017_Training_Part3_GroundTruth.csv")
    assert Counter(r.diagnosis for r in t2017.records) == {"nevus": 1372, "melanoma": 374,
                                                           "seborrheic keratosis": 254}
    t2018 = read_isic_csv(folder / "ISIC2018_Task3_GroundTruth.csv")
    assert Counter(r.extra["class_code"] for r in t2018.records) == {
        "NV": 6705, "MEL": 1113, "BKL": 1099, "BCC": 514, "AKIEC": 327, "VASC": 142, "DF": 115}
    t2019 = read_isic_csv(folder / "ISIC_2019_Training_GroundTruth.csv")
    codes = Counter(r.extra["class_code"] for r in t2019.records)
    assert codes == {"NV": 12875, "MEL": 4522, "BCC": 3323, "BKL": 2624, "AK": 867, "SCC": 628, "VASC": 253,
                     "DF": 239}
    t2020 = read_isic_csv(folder / "ISIC_2020_Training_GroundTruth.csv")
    assert len({r.patient_id for r in t2020.records}) == 2056
    # 27,124 "unknown" diagnoses are benign by the file's own benign_malignant column
    assert sum(r.diagnosis is None and r.label == "benign" for r in t2020.records) == 27124


def test_metadata_and_duplicates_lists(shared_data):
    folder = _sub(shared_data, "isic-ground-truth")
    meta2017 = read_isic_csv(folder / "ISIC-2017_Training_Data_metadata.csv")
    assert meta2017.format == "metadata" and len(meta2017.records) == 2000 and not meta2017.has_labels
    assert (meta2017.records[0].age, meta2017.records[0].sex) == (55.0, "female")
    meta2019 = read_isic_csv(folder / "ISIC_2019_Training_Metadata.csv")
    assert len(meta2019.records) == 25331
    assert sum(r.lesion_id is not None for r in meta2019.records) == 25331 - 2084
    assert meta2019.records[0].site == "anterior torso"
    test2019 = read_isic_csv(folder / "ISIC_2019_Test_Metadata.csv")
    assert test2019.format == "metadata" and len(test2019.records) == 8238
    dups = read_isic_csv(folder / "ISIC_2020_Training_Duplicates.csv")
    assert dups.format == "duplicates" and len(dups.duplicates) == 425
    assert dups.duplicates[0] == ("ISIC_0079038", "ISIC_8521950")


def test_isic_csv_inputs_join_merge_and_drop_listed_duplicates(shared_data, tmp_path):
    folder = _sub(shared_data, "isic-ground-truth")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("ISIC_0079038", "ISIC_8521950", "ISIC_2637011", "ISIC_9999999"):
        (images / f"{name}.jpg").write_bytes(b"x")
    config = DataConfig(source="isic", images=str(images), metadata=[
        str(folder / "ISIC_2020_Training_GroundTruth.csv"), str(folder / "ISIC_2020_Training_Duplicates.csv")])
    report = Report()
    records = collect_records(config, report)
    assert [r.image_id for r in records] == ["ISIC_0079038", "ISIC_2637011"]
    assert records[1].patient_id == "IP_7279968" and records[1].site == "head/neck"
    assert report.skipped == {"listed_duplicate": 1, "no_metadata": 1, "missing_image": 33126 - 3}


def test_two_ground_truths_merge_and_conflicts_are_excluded(shared_data, tmp_path):
    sample = _sub(shared_data, "isic-sample") / "images"
    folder = _sub(shared_data, "isic-ground-truth")
    config = DataConfig(source="isic", images=str(sample), metadata=[
        str(folder / "ISIC-2017_Training_Part3_GroundTruth.csv"), str(folder / "ISIC2016_Task3_Training_GroundTruth.csv"),
        str(folder / "ISIC-2017_Training_Data_metadata.csv")])
    report = Report()
    records = collect_records(config, report)
    json_labels = {r.image_id: r.label for r in read_isic_json_folder(sample)}
    in_2017 = {r.image_id for r in read_isic_csv(folder / "ISIC-2017_Training_Part3_GroundTruth.csv").records}
    in_2016 = {r.image_id for r in read_isic_csv(folder / "ISIC2016_Task3_Training_GroundTruth.csv").records}
    assert len(in_2017 & set(json_labels)) == 30  # SOURCE.md: 30 of the 34 are in the 2017 training GT
    assert {r.image_id for r in records} == (in_2017 | in_2016) & set(json_labels)
    assert all(r.label == json_labels[r.image_id] for r in records)  # "no label mismatches" (SOURCE.md)
    ages = {r.image_id: (r.age, r.sex) for r in read_isic_csv(folder / "ISIC-2017_Training_Data_metadata.csv").records}
    assert all((r.age, r.sex) == ages[r.image_id] for r in records if r.image_id in in_2017)
    assert sum(r.age is not None for r in records) >= 25  # filled from the metadata CSV ("unknown" stays None)
    assert all(r.diagnosis for r in records if r.image_id in in_2017)
    # the two ground truths disagree on three images (none of them in the sample): excluded, never guessed
    conflicts = {e["image_id"] for e in report.examples["label_conflict"]}
    assert conflicts == {"ISIC_0000077", "ISIC_0000511", "ISIC_0010094"}
    conflicting = tmp_path / "conflict.csv"
    conflicting.write_text("ISIC_0000000,malignant\n")  # 2017 says nevus
    config.metadata.append(str(conflicting))
    report = Report()
    assert "ISIC_0000000" not in {r.image_id for r in collect_records(config, report)}
    assert report.skipped["label_conflict"] == 4


def test_unknown_csv_header_is_an_input_error():
    with pytest.raises(InputError, match="unrecognised"):
        detect_format([["foo", "bar"], ["1", "2"]])
    assert issubclass(InputError, ConfigError)  # printed without a traceback by the CLI


# ---------------------------------------------------------------- groups, ids, folders


def test_lesion_and_patient_ids_join_groups_transitively():
    records = [SourceRecord("a", "isic", "benign", lesion_id="L1"),
               SourceRecord("b", "isic", "benign", lesion_id="L1", patient_id="P1"),
               SourceRecord("c", "isic", "malignant", patient_id="P1"),
               SourceRecord("d", "isic", "benign")]
    groups = group_ids(records)
    assert groups[0] == groups[1] == groups[2] != groups[3]


def test_tiny_inputs_still_split_without_leaks():
    records = [SourceRecord(f"i{i}", "folder", "benign" if i % 2 else "malignant", lesion_id=f"L{i // 2}")
               for i in range(12)]
    result = assign_splits(records)
    assert set(result.splits) <= {"train", "validation", "test"} and "train" in result.splits
    assert leaking_groups(records, result.splits) == {}
    single = assign_splits(records[:1])
    assert single.splits == ["train"] and single.notes


@pytest.mark.parametrize("raw", ["../../etc/passwd", ".hidden", "a/b\\c", "CON", "", "é" * 300])
def test_image_ids_become_safe_file_names(raw):
    stem = safe_file_stem(raw)
    assert stem and "/" not in stem and "\\" not in stem and not stem.startswith(".")
    assert len(stem) <= 111 and stem.lower() != "con"
    assert safe_file_stem("ISIC_0000000") == "ISIC_0000000"
    assert safe_file_stem("a/b") != safe_file_stem("a_b")


def test_folder_source_keeps_metadata_and_refuses_paths_outside(tmp_path):
    for rel in ("benign/x.png", "malignant/y.png", "stray.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    rows = [{"file_name": "benign/x.png", "image_id": "X-1", "lesion_id": "L9", "label": "malignant",
             "extra": {"skin_tone": "dark", "patient_name": "Jane Roe", "mrn": "5555",
                       "orig_path": "/home/alice/clinic-x/x.png"}},
            {"file_name": "../outside.png", "image_id": "evil"},
            "not an object"]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = Report()
    records = read_image_folder(tmp_path, report)
    by_id = {r.image_id: r for r in records}
    assert set(by_id) == {"X-1", "y"}
    assert by_id["X-1"].label == "benign" and by_id["X-1"].lesion_id == "L9"  # the subfolder wins
    assert by_id["X-1"].extra == {"skin_tone": "dark"}  # extra fields: only those dermt2im writes go on
    assert report.skipped == {"bad_metadata": 2, "not_in_class_folder": 1}
    assert report.converted == {"folder_label_used": 1, "extra_fields_dropped": 1}
    assert "Jane Roe" not in json.dumps(report.to_dict()) and "5555" not in json.dumps(report.to_dict())


def test_index_reports_duplicate_stems(tmp_path):
    for rel in ("a/ISIC_1.jpg", "b/ISIC_1.png", "b/.hidden.jpg", "b/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    report = Report()
    assert list(index_images(tmp_path, report)) == ["ISIC_1"]
    assert report.skipped == {"duplicate_id": 1}
