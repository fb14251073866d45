"""Hostile and careless inputs (issue 20; 19.8, 19.11): every stage either does its work or stops with a clean
error, never changes anything outside its output folder and never loses a previous output.

The catalogue at the end runs bad file names, bad numbers, bad strings and bad output folders through every
command in-process on a tiny world (16 phantoms, a 4-image generation from the random tiny base); the tests
before it pin each defect that was fixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import sys
import threading
from pathlib import Path

import pytest

from dermt2im_hub.cli import main as cli_main
from dermt2im_hub.config import ConfigError, load_config

BAD_NAME = b"bad\xff\xfe.png"  # not UTF-8


# ---------------------------------------------------------------------------------------------- helpers


def run(*argv, capsys) -> tuple[int, str, str]:
    """`dermt2im ARGV` in this process: (exit code, stdout, stderr); argparse's exits count as exit codes."""
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(*roots: Path) -> dict[str, str]:
    """path -> sha256 (or link target) of everything below `roots`, hidden files included."""
    found = {}
    for root in roots:
        for current, dirs, files in os.walk(root):
            for name in files + [d for d in dirs if os.path.islink(os.path.join(current, d))]:
                path = os.path.join(current, name)
                key = os.fsencode(path).hex()
                if os.path.islink(path):
                    found[key] = "link:" + os.readlink(path)
                else:
                    found[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def without(files: dict[str, str], folder: Path) -> dict[str, str]:
    prefix = os.fsencode(str(folder) + os.sep).hex()
    return {k: v for k, v in files.items() if not k.startswith(prefix)}


def add_hostile_files(folder: Path) -> None:
    """A copy of an image under a non-UTF-8 name, a symlink loop named like an image and a GIF."""
    first = sorted((folder / "benign").glob("*.png"))[0]
    shutil.copy(first, os.path.join(os.fsencode(folder / "benign"), BAD_NAME))
    os.symlink("loop.png", folder / "malignant" / "loop.png")
    from PIL import Image

    Image.new("RGB", (160, 160), (120, 80, 60)).save(folder / "benign" / "animated.gif")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_base, phantom_dir):
    """ph (16 phantoms), hostile (ph + odd files), pre (preprocess of ph), gen (4 generated images), ds (a built
    dataset of gen), a_file; the tiny base lives outside and is checked too."""

    root = tmp_path_factory.mktemp("world")
    shutil.copytree(phantom_dir, root / "ph")
    shutil.copytree(phantom_dir, root / "hostile")
    add_hostile_files(root / "hostile")
    capsys = _Capture()
    for argv in (["preprocess", "--source", "folder", "--images", root / "ph", "--output", root / "pre", "--size",
                  "64", "--num-workers", "1", "--no-progress"],
                 ["generate", "--base", tiny_base, "--output", root / "gen", "--num-images", "4", "--size", "64",
                  "--steps", "2", "--samplers", "Euler", "--no-progress", "--batch-size", "4"],
                 ["build-dataset", root / "gen", "--output", root / "ds", "--quiet"]):
        code, _, err = run(*argv, capsys=capsys)
        if code != 0:
            pytest.fail(f"world setup {argv[0]} failed: {err}")
    (root / "a_file").write_text("not a folder")
    return root


class _Capture:
    """capsys for a module fixture (capsys itself is function-scoped): output is simply discarded."""

    def readouterr(self):
        class Out:
            out = err = ""

        return Out()


# ---------------------------------------------------------------------------------------------- 20.3 odd names


def test_tree_fingerprint_hashes_non_utf8_names_and_skips_link_loops(tmp_path):
    from dermt2im_hub.manifest import tree_fingerprint

    (tmp_path / "a.png").write_bytes(b"x")
    before = tree_fingerprint(tmp_path)
    Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), BAD_NAME))).write_bytes(b"y")
    os.symlink("loop.png", tmp_path / "loop.png")
    after = tree_fingerprint(tmp_path)  # raised UnicodeEncodeError before
    assert after != before and len(after) == 64


def test_preprocess_skips_and_reports_odd_names(world, tmp_path, capsys):
    out = tmp_path / "pre"
    code, stdout, err = run("preprocess", "--source", "folder", "--images", world / "hostile", "--output", out,
                            "--size", "64", "--num-workers", "1", "--no-progress", capsys=capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["skipped"]["unreadable_name"] == 1 and report["skipped"]["broken_link"] == 1, report["skipped"]
    assert report["skipped"]["unsupported_format"] == 1  # the .gif (20.10): ignored without a word before
    assert "unreadable_name" in stdout and "broken_link" in stdout
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 16


def test_qa_and_build_dataset_skip_odd_names(world, tmp_path, capsys, caplog):
    plain = tmp_path / "plain"  # a folder of PNGs without metadata: qa lists the files itself
    shutil.copytree(world / "hostile", plain, symlinks=True)
    (plain / "metadata.jsonl").unlink()
    (plain / "manifest.json").unlink()
    with caplog.at_level("WARNING"):
        code, _, err = run("qa", plain, "--real", world / "pre", "--output", tmp_path / "qa", "--allow-memorized",
                           "--set", "features.image_size=64", capsys=capsys)
    assert code == 0, err
    assert "unreadable name" in caplog.text and "broken link" in caplog.text
    scores = (tmp_path / "qa" / "scores.jsonl").read_text(encoding="utf-8")
    assert "bad" not in scores and "loop" not in scores
    code, stdout, err = run("build-dataset", plain, "--config", "real", "--output", tmp_path / "ds", "--quiet",
                            capsys=capsys)
    assert "Traceback" not in err and code in (0, 2), err  # raised UnicodeEncodeError before
    code, stdout, err = run("build-dataset", world / "hostile", "--config", "real", "--output", tmp_path / "ds2",
                            "--quiet", capsys=capsys)
    assert code == 0 and "16 rows" in stdout, err


# ---------------------------------------------------------------------------------------------- 20.4 output guard


def test_preprocess_into_another_sources_output_deletes_nothing_without_overwrite(world, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(world / "ph", other)
    for image in sorted((other / "benign").glob("*.png"))[:2]:
        image.unlink()
    out = tmp_path / "pre"
    shutil.copytree(world / "pre", out)  # an earlier preprocess run of another source
    before = snapshot(out)
    code, _, err = run("preprocess", "--source", "folder", "--images", other, "--output", out, "--size", "64",
                       "--num-workers", "1", "--no-progress", capsys=capsys)
    assert code == 2 and "--overwrite" in err and "Traceback" not in err
    assert snapshot(out) == before  # nothing deleted as "stale"
    code, stdout, err = run("preprocess", "--source", "folder", "--images", other, "--output", out, "--size", "64",
                            "--num-workers", "1", "--no-progress", "--overwrite", capsys=capsys)
    assert code == 0 and "stale_removed: 2" in stdout, stdout + err


def test_the_same_preprocess_command_runs_again_into_its_own_folder(world, capsys):
    code, stdout, err = run("preprocess", "--source", "folder", "--images", world / "ph", "--output", world / "pre",
                            "--size", "64", "--num-workers", "1", "--no-progress", capsys=capsys)
    assert code == 0 and "reused 16" in stdout, err


@pytest.mark.parametrize("command", ["preprocess", "generate", "train-lora", "qa"])
def test_no_stage_writes_into_the_base_model_folder(world, tiny_base, command, capsys):
    argv = {
        "preprocess": ["--source", "folder", "--images", world / "ph", "--output", tiny_base, "--size", "64"],
        "generate": ["--base", tiny_base, "--output", tiny_base, "--num-images", "2", "--size", "64"],
        "train-lora": ["--pretrained-model-name-or-path", tiny_base, "--train-data-dir", world / "pre",
                       "--output-dir", tiny_base, "--resolution", "64", "--max-train-steps", "1"],
        "qa": [world / "gen", "--real", world / "pre", "--output", tiny_base],
    }[command]
    before = snapshot(tiny_base)
    code, _, err = run(command, *argv, capsys=capsys)
    assert code == 2 and "Traceback" not in err, err
    assert snapshot(tiny_base) == before


def test_preprocess_refuses_the_parent_of_its_input(world, capsys):
    before = snapshot(world)
    code, _, err = run("preprocess", "--source", "folder", "--images", world / "ph", "--output", world, "--size",
                       "64", capsys=capsys)
    assert code == 2 and "contains the images input" in err
    assert snapshot(world) == before


@pytest.mark.parametrize("folder", ["ds", "gen"])
def test_benchmark_refuses_a_dataset_or_generation_folder(world, folder, capsys):
    before = snapshot(world)
    code, _, err = run("benchmark", "--real.path", world / "real-ds", "--synthetic.path", world / "synthetic-ds",
                       "--output-dir", world / folder, "--no-leaderboard", capsys=capsys)
    assert code == 2 and "--overwrite" in err, err
    assert snapshot(world) == before and not (world / folder / "classifiers").exists()


def test_the_guard_claims_only_what_it_checked(tmp_path):
    from dermt2im_hub.utils.output_folder import OutputFolderError, claim_output_folder, claimed_output_folder

    out = tmp_path / "out"
    with pytest.raises(RuntimeError), claimed_output_folder(out, "qa", {"real": tmp_path / "real"}):
        raise RuntimeError("the stage failed before writing")
    assert not out.exists()  # a refused or failed run leaves nothing behind
    claim_output_folder(out, "qa", {"x": "a"})
    (out / "report.json").write_text("{}")
    claim_output_folder(out, "qa", {"x": "a"})  # the same stage and inputs: its own folder
    with pytest.raises(OutputFolderError, match="other inputs"):
        claim_output_folder(out, "qa", {"x": "b"})
    with pytest.raises(OutputFolderError, match="output of stage 'qa'"):
        claim_output_folder(out, "generate")
    claim_output_folder(out, "generate", overwrite=True)


# ---------------------------------------------------------------------------------------------- 20.5 non-finite


@pytest.mark.parametrize("override, key", [("cfg=inf", "cfg"), ("cfg=nan", "cfg"), ("cfg=-.inf", "cfg"),
                                           ("sampler_weights.Euler=nan", "sampler_weights.Euler"),
                                           ("seed=inf", "seed")])
def test_non_finite_numbers_are_refused_naming_the_key(override, key):
    from dermt2im_hub.generation.plan import GenerationConfig

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(GenerationConfig, None, [override])


def test_non_finite_cli_values_exit_2(world, tiny_base, tmp_path, capsys):
    for extra in (["--cfg", "inf"], ["--cfg", "nan"], ["--lora", f"{world / 'gen'}x:nan"]):
        code, _, err = run("generate", "--base", tiny_base, "--output", tmp_path / "g", "--num-images", "2", *extra,
                           capsys=capsys)
        assert code == 2 and ("finite" in err) and "Traceback" not in err, err
        assert not (tmp_path / "g").exists()


def test_json_outputs_never_hold_nan(tmp_path):
    from dermt2im_hub.manifest import write_manifest
    from dermt2im_hub.utils.files import write_jsonl

    write_manifest(tmp_path, "qa", outputs={"fid": float("nan"), "kid": [float("inf")]})
    write_jsonl(tmp_path / "rows.jsonl", [{"scale": float("-inf")}])
    text = (tmp_path / "manifest.json").read_text() + (tmp_path / "rows.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["outputs"] == {"fid": None, "kid": [None]}


# ---------------------------------------------------------------------------------------------- 20.6 strings


@pytest.mark.parametrize("text", ["yes", "[blurry]", "{label}", "null-ish", "1e3", "no"])
def test_string_options_keep_the_text_as_typed(text):
    import argparse

    from dermt2im_hub.config import add_config_arguments, config_from_args
    from dermt2im_hub.generation.plan import GenerationConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--config", default=None)
    add_config_arguments(parser, GenerationConfig, skip=("lora", "transformations"))
    config = config_from_args(GenerationConfig, parser.parse_args(["--negative-prompt", text]))
    assert config.negative_prompt == text
    config = load_config(GenerationConfig, None, [f"negative_prompt={text}"])
    assert config.negative_prompt == text


def test_prompt_template_with_only_placeholders_and_set_merging():
    from dermt2im_hub.data.config import DataConfig
    from dermt2im_hub.generation.plan import GenerationConfig

    assert load_config(DataConfig, None, ["prompt_template={label}"]).prompt_template == "{label}"
    config = load_config(GenerationConfig, None, ["transformations.size.tiny.weight=3"])
    assert config.transformations["size"]["tiny"].weight == 3
    assert set(config.transformations) == {"size", "count", "site", "skin"}  # merged, not replaced
    assert len(config.transformations["size"]) == 4
    with pytest.raises(ConfigError, match="size"):  # a new option with a negative weight: merged, then refused
        load_config(GenerationConfig, None, ["transformations.size.huge.weight=-1"])


def test_list_options_take_one_item_and_literals_stay_text():
    from dermt2im_hub.evaluation.config import EvaluationConfig
    from dermt2im_hub.training.config import TrainLoraConfig

    assert load_config(EvaluationConfig, None, ["seeds=0"]).seeds == [0]
    assert load_config(EvaluationConfig, None, ["seeds=0,3"]).seeds == [0, 3]
    assert load_config(TrainLoraConfig, None, ["mixed_precision=no"]).mixed_precision == "no"


# ---------------------------------------------------------------------------------------------- 20.8 resume


def test_a_plain_rerun_resumes_from_the_checkpoint(world, tiny_base, tmp_path, monkeypatch, capsys):
    from dermt2im_hub.testing.phantoms import PhantomConfig, make_phantoms
    from dermt2im_hub.training.checkpoints import INTERRUPT_ENV
    from dermt2im_hub.training.launch import main

    data = make_phantoms(tmp_path / "data", PhantomConfig(num_images=4, size=64, seed=1), progress=False)
    out = tmp_path / "lora"
    argv = ["--pretrained_model_name_or_path", str(tiny_base), "--train_data_dir", str(data), "--output_dir",
            str(out), "--resolution", "32", "--max_train_steps", "3", "--checkpointing_steps", "10",
            "--validation_steps", "0", "--validation_inference_steps", "1", "--validation_seeds", "[0]",
            "--report_to", "none", "--rank", "2"]
    monkeypatch.setenv(INTERRUPT_ENV, "2")
    assert main(argv) == 130  # Ctrl-C after step 2: a checkpoint is saved
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    monkeypatch.delenv(INTERRUPT_ENV)
    assert main(argv) == 0  # the same command again: resumes at step 2 (it restarted at 0 before)
    extra = json.loads((out / "manifest.json").read_text())["extra"]
    assert str(extra["resumed_from"]).endswith("checkpoint-2"), extra.get("resumed_from")
    changed = argv + ["--learning_rate", "0.5"]
    assert main(changed) == 2 and "other settings (changed: learning_rate)" in capsys.readouterr().err
    assert main(changed + ["--overwrite"]) == 0  # starts over
    assert not (out / "checkpoints" / "checkpoint-2").exists()


def test_ctrl_c_lets_a_stage_child_finish_its_checkpoint(tmp_path):
    """`dermt2im run` used to kill its training child on Ctrl-C (subprocess.call), so no checkpoint was written."""
    from dermt2im_hub.utils.launch import call_child

    pid_file, saved = tmp_path / "pid", tmp_path / "checkpoint"
    child = ("import os, signal, sys, time\n"
             "def stop(*_):\n"
             f"    time.sleep(0.5); open({str(saved)!r}, 'w').write('saved'); sys.exit(130)\n"
             "signal.signal(signal.SIGINT, stop)\n"
             f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
             "time.sleep(30)\n")

    def ctrl_c():  # what a terminal does: SIGINT to the child and to this process
        for _ in range(1200):  # up to 60 s: a child's start takes seconds on a loaded 2-core machine
            if pid_file.is_file() and pid_file.read_text():
                break
            threading.Event().wait(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGINT)
        # to the main thread, which waits on the child (a process-wide kill may land on this helper thread)
        signal.pthread_kill(main_thread, signal.SIGINT)

    main_thread = threading.main_thread().ident
    # Python's own Ctrl-C handler, as a fresh `dermt2im run` has it (not whatever an earlier test left installed)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            call_child([sys.executable, "-c", child])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert saved.read_text() == "saved"


# ---------------------------------------------------------------------------------------------- 19.8, 19.11


def test_outputs_follow_the_umask(tmp_path):
    from dermt2im_hub.utils.files import atomic_write_text

    path = atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # mkstemp's 0600 before


def test_train_lora_launches_accelerate_with_the_config_it_built(tmp_path, monkeypatch):
    from dermt2im_hub.cli import training as cli_training
    from dermt2im_hub.config import read_yaml

    seen = {}

    def fake_call(command, env=None):
        seen["command"] = command
        seen["config"] = read_yaml(command[command.index("--config") + 1])
        return 0

    monkeypatch.setattr("dermt2im_hub.utils.launch.call_child", fake_call)
    data = tmp_path / "data"
    data.mkdir()
    code = cli_main(["train-lora", "--num-processes", "2", "--train-data-dir", str(data), "--output-dir",
                     str(tmp_path / "out"), "--validation-prompt", "a mole, on the neck", "--set",
                     "learning_rate=3e-4", "--instance-prompt", "yes"])
    assert code == 0 and cli_training is not None
    module_args = seen["command"][seen["command"].index("dermt2im_hub.training.launch") + 1:]
    assert module_args[0] == "--config" and len(module_args) == 2  # no command line rebuilt from parsed options
    config = seen["config"]
    assert config["validation_prompts"] == ["a mole, on the neck"] and config["learning_rate"] == 3e-4
    assert config["instance_prompt"] == "yes"


# ---------------------------------------------------------------------------------------------- 20.10


def test_benchmark_refuses_one_folder_as_real_and_synthetic_and_tiny_images():
    from dermt2im_hub.evaluation.config import EvaluationConfig

    with pytest.raises(ConfigError, match="the same"):
        load_config(EvaluationConfig, None, ["real.path=x", "synthetic.path=x"])
    with pytest.raises(ConfigError, match="image_size"):
        load_config(EvaluationConfig, None, ["image_size=7"])


def _records(*pairs):
    from dermt2im_hub.data.sources import SourceRecord

    return [SourceRecord(image_id, "isic", label) for image_id, label in pairs]


def test_duplicate_lists_keep_one_image_of_every_pair():
    from dermt2im_hub.data.collect import _drop_listed_duplicates
    from dermt2im_hub.data.report import Report

    records = _records(("a", "benign"), ("b", "benign"), ("c", "benign"), ("d", "malignant"))
    pairs = [("a", "b"), ("b", "a"), ("d", "d"), ("b", "c")]  # symmetric, self, chained
    kept = [r.image_id for r in _drop_listed_duplicates(records, pairs, Report())]
    assert kept == ["a", "d"]  # symmetric used to drop a and b; the self pair dropped d


def test_a_row_listed_twice_with_two_labels_is_a_conflict():
    from dermt2im_hub.data.collect import unique_by_id
    from dermt2im_hub.data.report import Report

    report = Report()
    kept = unique_by_id(_records(("a", "benign"), ("a", "malignant"), ("b", "benign"), ("b", "benign")), report,
                        "x.csv")
    assert [r.image_id for r in kept] == ["b"]
    assert report.skipped == {"label_conflict": 1, "duplicate_id": 1}


def test_an_unclosed_csv_quote_is_an_error(tmp_path):
    from dermt2im_hub.data.sources import InputError, read_csv_rows

    path = tmp_path / "gt.csv"
    path.write_text('image,target\n"ISIC_1,0\nISIC_2,1\n')
    with pytest.raises(InputError, match="unclosed quote"):
        read_csv_rows(path)  # merged ISIC_2's row into a field before


def test_an_oversized_infotext_is_flagged_and_not_published(world, tmp_path, capsys):
    import pyarrow.parquet as pq
    from PIL import Image, PngImagePlugin

    folder = tmp_path / "a1111" / "benign"
    folder.mkdir(parents=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "benign mole\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, "
                  "Model: x\n" + "A" * 200_000)
    Image.new("RGB", (64, 64), (150, 100, 80)).save(folder / "x.png", pnginfo=info)
    code, stdout, err = run("build-dataset", tmp_path / "a1111", "--config", "a1111", "--output", tmp_path / "ds",
                            "--quiet", capsys=capsys)
    assert code == 0 and "oversized" in stdout, stdout + err
    rows = pq.read_table(next((tmp_path / "ds" / "data").rglob("*.parquet"))).to_pylist()  # data/<config>/<sampler>/
    assert b"AAAAAAAA" not in rows[0]["image"]["bytes"]  # the 200 kB text was kept in the image bytes before


def test_int32_images_are_scaled_by_their_range():
    import numpy as np
    from PIL import Image

    from dermt2im_hub.data.images import _to_rgb

    samples = np.linspace(0, 2**31 - 1, 64 * 64).reshape(64, 64).astype(np.int32)
    rgb = np.asarray(_to_rgb(Image.fromarray(samples, "I"), []))
    assert (rgb == 255).mean() < 0.01 and abs(float(rgb.mean()) - 127.5) < 2  # 2/3 saturated at 255 before


def test_a_missing_local_base_or_lora_is_not_a_hub_id(world, tiny_base, tmp_path, capsys):
    for extra in (["--base", world / "no-base"], ["--base", tiny_base, "--lora", "./no-lora:0.5"]):
        code, _, err = run("generate", *extra, "--output", tmp_path / "g", capsys=capsys)
        assert code == 2 and "not found (no such file or folder)" in err, err
    code, _, err = run("train-lora", "--pretrained-model-name-or-path", world / "no-base", "--train-data-dir",
                       world / "pre", "--output-dir", tmp_path / "l", capsys=capsys)
    assert code == 2 and "not found (no such file or folder)" in err, err


# ---------------------------------------------------------------------------------------------- the catalogue

OK, REFUSED, CLEAN = "ok", "refused", "clean"  # exit 0; exit 2; any exit code without a traceback

CATALOGUE = [
    # preprocess
    ("preprocess odd names", OK, ["preprocess", "--source", "folder", "--images", "{w}/hostile", "--output", "{new}",
                                  "--size", "64", "--num-workers", "1", "--no-progress"]),
    ("preprocess into another stage", REFUSED, ["preprocess", "--source", "folder", "--images", "{w}/ph",
                                                "--output", "{w}/gen", "--size", "64"]),
    ("preprocess into a file", REFUSED, ["preprocess", "--source", "folder", "--images", "{w}/ph", "--output",
                                         "{w}/a_file"]),
    ("preprocess inside its input", REFUSED, ["preprocess", "--source", "folder", "--images", "{w}/ph", "--output",
                                              "{w}/ph/out"]),
    ("preprocess size nan", REFUSED, ["preprocess", "--source", "folder", "--images", "{w}/ph", "--output", "{new}",
                                      "--size", "nan"]),
    ("preprocess missing images", REFUSED, ["preprocess", "--source", "folder", "--images", "{w}/nothing",
                                            "--output", "{new}"]),
    ("preprocess bad metadata", REFUSED, ["preprocess", "--source", "ham10000", "--images", "{w}/ph", "--metadata",
                                          "{w}/a_file", "--output", "{new}"]),
    ("preprocess unknown source", REFUSED, ["preprocess", "--source", "bogus", "--images", "{w}/ph", "--output",
                                            "{new}"]),
    # generate
    ("generate cfg inf", REFUSED, ["generate", "--base", "{base}", "--output", "{new}", "--cfg", "inf"]),
    ("generate lora scale nan", REFUSED, ["generate", "--base", "{base}", "--output", "{new}", "--lora",
                                          "{w}/gen:nan"]),
    ("generate into the data folder", REFUSED, ["generate", "--base", "{base}", "--output", "{w}/pre",
                                                "--num-images", "2", "--size", "64"]),
    ("generate into the dataset", REFUSED, ["generate", "--base", "{base}", "--output", "{w}/ds", "--num-images",
                                            "2", "--size", "64"]),
    ("generate missing base folder", REFUSED, ["generate", "--base", "{w}/no/such/base", "--output", "{new}"]),
    ("generate steps 0", REFUSED, ["generate", "--base", "{base}", "--output", "{new}", "--steps", "0"]),
    ("generate size 7", REFUSED, ["generate", "--base", "{base}", "--output", "{new}", "--size", "7"]),
    ("generate bad sampler", REFUSED, ["generate", "--base", "{base}", "--output", "{new}", "--samplers", "Bogus"]),
    ("generate pickle lora", REFUSED, ["generate", "--base", "{base}", "--output", "{new}", "--lora",
                                       "{w}/evil.bin"]),
    ("generate template without label", REFUSED, ["generate", "--base", "{base}", "--output", "{new}",
                                                  "--prompt-template", "[blurry]"]),
    # train-lora
    ("train into the generation", REFUSED, ["train-lora", "--pretrained-model-name-or-path", "{base}",
                                            "--train-data-dir", "{w}/pre", "--output-dir", "{w}/gen"]),
    ("train into its data", REFUSED, ["train-lora", "--pretrained-model-name-or-path", "{base}", "--train-data-dir",
                                      "{w}/pre", "--output-dir", "{w}/pre/lora"]),
    ("train lr nan", REFUSED, ["train-lora", "--pretrained-model-name-or-path", "{base}", "--train-data-dir",
                               "{w}/pre", "--output-dir", "{new}", "--learning-rate", "nan"]),
    ("train steps inf", REFUSED, ["train-lora", "--pretrained-model-name-or-path", "{base}", "--train-data-dir",
                                  "{w}/pre", "--output-dir", "{new}", "--max-train-steps", "inf"]),
    ("train on odd names", REFUSED, ["train-lora", "--pretrained-model-name-or-path", "{base}", "--train-data-dir",
                                     "{w}/hostile", "--output-dir", "{new}", "--resolution", "7"]),
    ("train on the dataset", REFUSED, ["train-lora", "--pretrained-model-name-or-path", "{base}",
                                       "--train-data-dir", "{w}/ds", "--output-dir", "{new}"]),
    # qa
    ("qa into the data folder", REFUSED, ["qa", "{w}/gen", "--real", "{w}/pre", "--output", "{w}/pre"]),
    ("qa into the dataset", REFUSED, ["qa", "{w}/gen", "--real", "{w}/pre", "--output", "{w}/ds"]),
    ("qa of a missing folder", REFUSED, ["qa", "{w}/nothing", "--real", "{w}/pre", "--output", "{new}"]),
    ("qa of a dataset", REFUSED, ["qa", "{w}/ds", "--real", "{w}/pre", "--output", "{new}"]),
    ("qa threshold nan", REFUSED, ["qa", "{w}/gen", "--real", "{w}/pre", "--output", "{new}", "--set",
                                   "artifacts.min_sharpness=nan"]),
    # build-dataset
    ("dataset into the data folder", REFUSED, ["build-dataset", "{w}/gen", "--output", "{w}/pre"]),
    ("dataset into its input", REFUSED, ["build-dataset", "{w}/gen", "--output", "{w}/gen/ds"]),
    ("dataset of odd names", CLEAN, ["build-dataset", "{w}/hostile", "--config", "real", "--output", "{new}",
                                     "--quiet"]),
    ("dataset of a missing folder", REFUSED, ["build-dataset", "{w}/nothing", "--output", "{new}"]),
    # benchmark and leaderboard
    ("benchmark into the generation", REFUSED, ["benchmark", "--real.path", "{w}/ds", "--synthetic.path", "{w}/gen",
                                                "--output-dir", "{w}/gen"]),
    ("benchmark one folder twice", REFUSED, ["benchmark", "--real.path", "{w}/ds", "--synthetic.path", "{w}/ds",
                                             "--output-dir", "{new}"]),
    ("benchmark image size 7", REFUSED, ["benchmark", "--image-size", "7", "--output-dir", "{new}"]),
    ("benchmark confidence nan", REFUSED, ["benchmark", "--confidence", "nan", "--output-dir", "{new}"]),
    ("leaderboard of nothing", REFUSED, ["leaderboard", "{w}/nothing"]),
    ("leaderboard into the generation", REFUSED, ["leaderboard", "{w}/ds", "--output", "{w}/gen"]),
    # foundation commands and the pipeline
    ("phantoms into the generation", REFUSED, ["make-phantoms", "{w}/gen", "--n", "2"]),
    ("tiny base into the data folder", REFUSED, ["make-tiny-base", "{w}/pre"]),
    ("run a missing recipe", REFUSED, ["run", "{w}/no-recipe.yaml", "--output", "{new}"]),
]


@pytest.mark.parametrize("name, expect, argv", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_catalogue(world, tiny_base, tmp_path, name, expect, argv, capsys):
    (world / "evil.bin").write_bytes(b"\x80\x04")  # a pickle-named weight file (never loaded)
    new = tmp_path / "new-output"
    args = [a.format(w=world, base=tiny_base, new=new) for a in argv]
    before = snapshot(world, tiny_base)
    code, _, err = run(*args, capsys=capsys)
    assert "Traceback" not in err, err
    if expect == OK:
        assert code == 0, err
    elif expect == REFUSED:
        assert code == 2 and err.strip(), err
    else:
        assert code in (0, 1, 2, 3), err
    after = snapshot(world, tiny_base)
    assert without(after, new) == without(before, new), "files outside the output folder changed"
