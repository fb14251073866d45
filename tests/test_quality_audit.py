"""Quality stage end to end: memorization audit with planted copies, run_qa folder updates, the `dermt2im qa` CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from dermt2im_hub.quality.config import FeatureConfig, FidelityConfig, QualityConfig
from dermt2im_hub.quality.images import FolderError, load_rgb
from dermt2im_hub.quality.run import run_qa
from dermt2im_hub.records import read_records, write_records
from dermt2im_hub.testing.phantoms import PhantomConfig, make_phantoms, render_phantom
from dermt2im_hub.utils.files import atomic_save_png, read_jsonl, sha256_file

RNG = np.random.default_rng(0)
TEST_SPLIT_IDS = ("phantom-0-00010", "phantom-0-00011")
COPY_KINDS = ("exact", "resized", "noised", "jpeg", "crop80", "crop65", "mirrored")


def fast_config(**overrides) -> QualityConfig:
    """Defaults except a small, fast extractor and fewer KID subsets."""
    config = QualityConfig(progress=False, features=FeatureConfig(model="resnet18", image_size=64),
                           fidelity=FidelityConfig(kid_subsets=10), top_k_pairs=4)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def write_generated_folder(folder: Path, images: list[tuple[str, np.ndarray]]) -> Path:
    """A generation-output folder (contract 2): {label}/{index:05d}-{seed}.png plus metadata.jsonl rows."""
    rows = []
    for index, (label, rgb) in enumerate(images):
        seed = 1000 + index
        rel = f"{label}/{index:05d}-{seed}.png"
        atomic_save_png(Image.fromarray(rgb), folder / rel)
        rows.append({"file_name": rel, "label": label, "prompt": f"a dermoscopic image of a {label} skin lesion",
                     "negative_prompt": None, "sampler": "Euler", "steps": 20, "cfg_scale": 7.0, "seed": seed,
                     "width": rgb.shape[1], "height": rgb.shape[0], "transformations": [], "index": index,
                     "sha256": sha256_file(folder / rel)})
    with (folder / "metadata.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return folder


def planted_copies(source: np.ndarray) -> dict[str, np.ndarray]:
    """The ways a memorized training image shows up: as is, rescaled, noised, re-encoded, cropped."""
    height, width = source.shape[:2]
    _, jpeg = cv2.imencode(".jpg", source[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])
    crop80 = source[int(0.1 * height):int(0.9 * height), int(0.1 * width):int(0.9 * width)]
    crop65 = source[int(0.2 * height):int(0.85 * height), int(0.15 * width):int(0.8 * width)]
    return {
        "exact": source.copy(),
        "resized": cv2.resize(source, (384, 384), interpolation=cv2.INTER_CUBIC),
        "noised": np.clip(source + RNG.normal(0, 4, source.shape), 0, 255).astype(np.uint8),
        "jpeg": np.ascontiguousarray(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1]),
        "crop80": cv2.resize(crop80, (256, 256), interpolation=cv2.INTER_CUBIC),
        "crop65": cv2.resize(crop65, (256, 256), interpolation=cv2.INTER_CUBIC),
        "mirrored": np.ascontiguousarray(source[:, ::-1]),
    }


@pytest.fixture(scope="module")
def real_phantoms(tmp_path_factory) -> Path:
    """12 training phantoms (256 px) in the data-stage format; two rows are in the test split."""
    folder = make_phantoms(tmp_path_factory.mktemp("real"), PhantomConfig(num_images=12, size=256, seed=0),
                           progress=False)
    records = read_records(folder)
    for record in records:
        record.split = "test" if record.image_id in TEST_SPLIT_IDS else "train"
    write_records(folder, records)
    return folder


def _real_image(folder: Path, image_id: str) -> np.ndarray:
    record = next(r for r in read_records(folder) if r.image_id == image_id)
    return load_rgb(folder / record.file_name)


def test_planted_copies_are_flagged_and_unrelated_images_are_not(real_phantoms, tmp_path):
    images, expected = [], {}
    for index in range(6):  # unrelated: other phantoms, never trained on
        label = ("benign", "malignant")[index % 2]
        images.append((label, np.asarray(render_phantom(index, label, PhantomConfig(size=256, seed=1)))))
    sources = ["phantom-0-00000", "phantom-0-00003", "phantom-0-00004", "phantom-0-00007", "phantom-0-00008",
               "phantom-0-00009", "phantom-0-00001"]
    for source_id, kind in zip(sources, COPY_KINDS):
        expected[len(images)] = (source_id, kind)
        images.append(("benign", planted_copies(_real_image(real_phantoms, source_id))[kind]))
    test_split_copy = len(images)  # an exact copy of a test-split image: never trained on, so not memorized
    images.append(("benign", _real_image(real_phantoms, TEST_SPLIT_IDS[0])))
    write_generated_folder(tmp_path / "gen", images)

    result = run_qa(tmp_path / "gen", real_phantoms, fast_config())
    rows = result.rows
    for index, (source_id, kind) in expected.items():
        assert rows[index]["mem_flagged"] is True, (kind, rows[index])
        assert rows[index]["mem_nearest_id"] == source_id, kind
    for index in range(6):
        assert rows[index]["mem_flagged"] is False, rows[index]
    assert rows[test_split_copy]["mem_flagged"] is False
    assert result.report["memorization"]["num_training_images"] == 10
    assert result.memorization_blocked
    assert len(list((result.output_dir / "closest_pairs").glob("*.png"))) == 4


def test_copies_of_real_isic_images_among_real_derm_t2im_samples(shared_data, tmp_path):
    """Realistic inputs: the authors' synthetic samples are not copies of ISIC/HAM10000 images; planted
    copies of those are caught whatever was done to them."""
    synthetic_folder, isic = shared_data / "dermt2im-sample", shared_data / "isic-sample" / "images"
    if not synthetic_folder.is_dir() or not isic.is_dir():
        pytest.skip("needs ../shared/data/dermt2im-sample and ../shared/data/isic-sample")
    real_paths = sorted(isic.glob("*.jpg"))[:14]
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    for path in real_paths:  # a plain image folder is a valid real input; link rather than copy the samples
        (real_dir / path.name).symlink_to(path)
    images = [(p.parent.name, load_rgb(p)) for p in sorted(synthetic_folder.glob("*/*.png"))[::8]]
    planted = {}
    for path, kind in zip(real_paths[::2], COPY_KINDS):
        planted[len(images)] = (path.stem, kind)
        images.append(("malignant", planted_copies(load_rgb(path))[kind]))
    write_generated_folder(tmp_path / "gen", images)

    result = run_qa(tmp_path / "gen", real_dir, fast_config())
    flags = [row["mem_flagged"] for row in result.rows]
    for index, (source, kind) in planted.items():
        assert flags[index] is True and result.rows[index]["mem_nearest_id"] == source, kind
    unrelated = [row for index, row in enumerate(result.rows) if index not in planted]
    assert not any(row["mem_flagged"] for row in unrelated), [r["mem_match_inliers"] for r in unrelated]
    assert max(row["mem_match_inliers"] for row in unrelated) < 10


def test_run_qa_moves_rejects_updates_metadata_and_writes_the_report(real_phantoms, tmp_path):
    good = [(("benign", "malignant")[i % 2], np.asarray(render_phantom(i, ("benign", "malignant")[i % 2],
                                                                      PhantomConfig(size=256, seed=2))))
            for i in range(6)]
    blank = np.full((256, 256, 3), (205, 160, 140), np.uint8)
    noise = RNG.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(np.asarray(render_phantom(9, "malignant", PhantomConfig(size=256, seed=2))), (0, 0), 8)
    _, jpeg = cv2.imencode(".jpg", good[2][1][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])
    duplicate = np.ascontiguousarray(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1])
    images = good + [("malignant", blank), ("benign", noise), ("malignant", blurred), ("benign", duplicate)]
    folder = write_generated_folder(tmp_path / "gen", images)
    before = read_jsonl(folder / "metadata.jsonl")

    result = run_qa(folder, real_phantoms, fast_config())

    rows = read_jsonl(folder / "metadata.jsonl")
    assert [r["index"] for r in rows] == [r["index"] for r in before]  # same rows, same order, keys kept
    assert all(r["qa_passed"] for r in rows[:6])
    assert "no_lesion" in rows[6]["qa_reasons"] and "noisy" in rows[7]["qa_reasons"]
    assert "blurry" in rows[8]["qa_reasons"]
    assert rows[9]["qa_reasons"] == ["near_duplicate"] and rows[9]["qa_near_duplicate_of"] == rows[2]["file_name"]
    for row, old in zip(rows[6:], before[6:]):
        assert row["qa_passed"] is False
        assert row["file_name"] == f"rejected/{old['label']}/{Path(old['file_name']).name}"
        assert (folder / row["file_name"]).is_file() and not (folder / old["file_name"]).exists()
        assert sha256_file(folder / row["file_name"]) == old["sha256"]  # moved, not re-encoded
    expected_keys = {"qa_sharpness", "qa_clipping", "qa_noise", "qa_lesion_area", "qa_lesion_found",
                     "qa_near_duplicate_of", "qa_passed", "qa_reasons", "mem_nearest_id", "mem_phash_distance",
                     "mem_cosine", "mem_flagged", "ita", "ita_category"}
    assert all(expected_keys <= set(r) for r in rows)
    assert not any(r["mem_flagged"] for r in rows) and not result.memorization_blocked

    report = json.loads((folder / "qa" / "report.json").read_text())
    assert report["artifacts"]["passed"] == 6 and report["artifacts"]["pass_rate"] == pytest.approx(0.6)
    assert report["artifacts"]["reasons"]["near_duplicate"] == 1
    assert report["fidelity"]["feature_extractor"].startswith("resnet18 [random init, seed 0]")
    assert set(report["fidelity"]["per_class"]) == {"benign", "malignant"}
    assert report["fidelity"]["overall"]["fid"] >= 0
    assert sum(report["skin_tone"]["synthetic"]["categories"].values()) == 6
    assert (folder / "qa" / "ita_histogram.png").is_file()
    manifest = json.loads((folder / "qa" / "manifest.json").read_text())
    assert manifest["stage"] == "qa" and manifest["status"] == "complete"
    assert {"qa", "memorization", "skin_tone"} <= set(manifest["extra"]["card"])
    assert manifest["extra"]["card"]["memorization"]["result"].startswith("no synthetic image")

    # a re-run with a looser blur threshold brings the blurred image back and leaves the rest where they are
    config = fast_config()
    config.artifacts.min_sharpness = 0.0
    run_qa(folder, real_phantoms, config)
    rows = read_jsonl(folder / "metadata.jsonl")
    assert rows[8]["qa_passed"] and rows[8]["file_name"] == before[8]["file_name"]
    assert (folder / before[8]["file_name"]).is_file()
    assert rows[6]["file_name"].startswith("rejected/")


def test_plain_folder_is_read_only(real_phantoms, tmp_path):
    plain = tmp_path / "a1111" / "benign"
    plain.mkdir(parents=True)
    atomic_save_png(Image.fromarray(np.zeros((128, 128, 3), np.uint8)), plain / "00000-1.png")
    atomic_save_png(render_phantom(3, "benign", PhantomConfig(size=256)), plain / "00001-2.png")
    with pytest.raises(FolderError, match="read-only"):
        run_qa(tmp_path / "a1111", real_phantoms, fast_config())
    listing = sorted(p.relative_to(tmp_path) for p in (tmp_path / "a1111").rglob("*"))
    result = run_qa(tmp_path / "a1111", real_phantoms, fast_config(), output_dir=tmp_path / "out")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "a1111").rglob("*")) == listing
    scores = read_jsonl(tmp_path / "out" / "scores.jsonl")
    assert [s["qa_passed"] for s in scores] == [False, True] and scores[0]["label"] == "benign"
    assert result.report["mode"].startswith("read-only")
    for _ in range(2):  # a report folder inside the image folder: its pair PNGs are not taken for inputs
        inside = run_qa(tmp_path / "a1111", real_phantoms, fast_config(), output_dir=tmp_path / "a1111" / "my-qa")
        assert len(inside.rows) == 2
    assert list((tmp_path / "a1111" / "my-qa" / "closest_pairs").glob("*.png"))


def test_cli_exit_status_follows_the_memorization_audit(real_phantoms, tmp_path, run_cli):
    source = _real_image(real_phantoms, "phantom-0-00005")
    images = [("benign", np.asarray(render_phantom(i, "benign", PhantomConfig(size=256, seed=4)))) for i in (0, 2)]
    folder = write_generated_folder(tmp_path / "gen", images + [("malignant", source)])
    common = ["--real", real_phantoms, "--features.image-size", "64", "--fidelity.kid-subsets", "5",
              "--no-progress"]

    code, out, err = run_cli("qa", folder, *common)
    assert code == 3 and "memorized" in err and "memorization: 1 synthetic image(s)" in out
    assert (folder / "qa" / "report.json").is_file()

    code, _, err = run_cli("qa", folder, *common, "--allow-memorized")
    assert code == 0 and "warning" in err

    code, out, _ = run_cli("qa", folder, *common, "--quarantine-memorized")
    assert code == 0
    row = read_jsonl(folder / "metadata.jsonl")[2]
    assert row["mem_flagged"] and not row["qa_passed"] and "memorized" in row["qa_reasons"]
    assert row["file_name"].startswith("rejected/malignant/") and (folder / row["file_name"]).is_file()

    code, _, err = run_cli("qa", tmp_path / "missing", *common)
    assert code == 2 and "not found" in err
    assert (folder / "qa" / "README.md").is_file()  # the report folder has its card


def test_folders_of_the_wrong_stage_are_refused(real_phantoms, tmp_path):
    from dermt2im_hub.manifest import write_manifest

    images = [("benign", np.asarray(render_phantom(0, "benign", PhantomConfig(size=256, seed=4))))]
    folder = write_generated_folder(tmp_path / "gen", images)
    built = tmp_path / "built"  # a build-dataset folder: parquet plus a sample grid PNG
    atomic_save_png(Image.fromarray(images[0][1]), built / "sample_grid.png")
    write_manifest(built, "build_dataset", {})
    with pytest.raises(FolderError, match="stage 'build_dataset', not the real training images"):
        run_qa(folder, built, fast_config())
    with pytest.raises(FolderError, match="stage 'build_dataset', not images"):
        run_qa(built, real_phantoms, fast_config(), output_dir=tmp_path / "out")
    with pytest.raises(FolderError, match="--output .* holds the output of stage 'phantoms'"):
        run_qa(folder, real_phantoms, fast_config(), output_dir=real_phantoms)
    # a data-stage folder is only read: its metadata.jsonl and images stay as they are
    listing = sorted(p.relative_to(real_phantoms) for p in real_phantoms.rglob("*"))
    metadata = (real_phantoms / "metadata.jsonl").read_bytes()
    with pytest.raises(FolderError, match="read-only"):
        run_qa(real_phantoms, folder, fast_config())
    run_qa(real_phantoms, folder, fast_config(), output_dir=tmp_path / "real-qa")
    assert sorted(p.relative_to(real_phantoms) for p in real_phantoms.rglob("*")) == listing
    assert (real_phantoms / "metadata.jsonl").read_bytes() == metadata


def test_cli_reads_the_quality_section_of_a_recipe(real_phantoms, tmp_path, run_cli):
    folder = write_generated_folder(tmp_path / "gen", [("benign", np.asarray(
        render_phantom(1, "benign", PhantomConfig(size=256, seed=6))))])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("quality:\n  progress: false\n  features:\n    image_size: 48\n  fidelity:\n    enabled: false\n"
                      "  artifacts:\n    min_sharpness: 1.0e+9\n")
    code, out, _ = run_cli("qa", folder, "--real", real_phantoms, "--config", recipe)
    assert code == 0 and "0/1 passed" in out
    saved = (folder / "qa" / "config.yaml").read_text()
    assert "image_size: 48" in saved
    shutil.rmtree(folder / "qa")


class CountingExtractor:
    """A FeatureExtractor wrapper that counts embedded images and can fail on a given call (a crash mid-run)."""

    def __init__(self, inner, fail_on_call: int | None = None):
        self.inner, self.fail_on_call, self.calls, self.embedded = inner, fail_on_call, 0, 0
        self.name = inner.name

    def describe(self) -> dict:
        return self.inner.describe()

    def embed(self, images):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        self.embedded += len(images)
        return self.inner.embed(images)


def test_an_interrupted_run_resumes_from_saved_measurements(real_phantoms, tmp_path):
    from dermt2im_hub.quality.features import build_extractor

    inner = build_extractor(FeatureConfig(model="resnet18", image_size=64))
    images = [(("benign", "malignant")[i % 2], np.asarray(render_phantom(i, ("benign", "malignant")[i % 2],
                                                                      PhantomConfig(size=256, seed=8))))
              for i in range(6)]
    folder = write_generated_folder(tmp_path / "gen", images)
    config = fast_config(batch_size=2)
    # 10 training images = 5 batches, then the 2nd synthetic batch is interrupted
    with pytest.raises(KeyboardInterrupt):
        run_qa(folder, real_phantoms, config, extractor=CountingExtractor(inner, fail_on_call=7))
    assert json.loads((folder / "qa" / "manifest.json").read_text())["status"] == "interrupted"
    assert "qa_passed" not in read_jsonl(folder / "metadata.jsonl")[0]  # the folder is updated only at the end

    resumed = CountingExtractor(inner)
    first = run_qa(folder, real_phantoms, config, extractor=resumed)
    assert resumed.embedded == 4  # the training images and the first synthetic batch came from the cache

    again = CountingExtractor(inner)
    config.artifacts.min_sharpness = 1e9  # new thresholds: judged again, nothing measured again
    second = run_qa(folder, real_phantoms, config, extractor=again)
    assert again.embedded == 0
    assert all(r["qa_reasons"] == ["blurry"] for r in second.rows)
    assert [r["qa_sharpness"] for r in second.rows] == [r["qa_sharpness"] for r in first.rows]
    assert [r["mem_cosine"] for r in second.rows] == [r["mem_cosine"] for r in first.rows]
