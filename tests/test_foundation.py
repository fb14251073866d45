"""Foundation: config loading, manifests, labels, tokenizer, tiny base, phantoms, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from dermt2im_hub.config import ConfigError, load_config, save_config
from dermt2im_hub.labels import binary_label
from dermt2im_hub.manifest import StageRun, read_manifest
from dermt2im_hub.records import ImageRecord, TestExclusion, TestLeakageError, assert_no_test_images, read_records


@dataclass
class _Inner:
    rank: int = 4
    alpha: float = 4.0


@dataclass
class _Cfg:
    name: str = "x"
    steps: int = 10
    samplers: list[str] = field(default_factory=lambda: ["Euler"])
    lora: _Inner = field(default_factory=_Inner)
    seed: int | None = None


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nstepz: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        load_config(_Cfg, path)


def test_unknown_nested_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora:\n  rnk: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'rnk'"):
        load_config(_Cfg, path)


def test_yaml_section_overrides_and_types(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"training": {"steps": 5, "lora": {"rank": 8}}, "generation": {"x": 1}}))
    cfg = load_config(_Cfg, path, ["lora.alpha=16", "samplers=Euler a,PLMS"], section="training")
    assert (cfg.steps, cfg.lora.rank, cfg.lora.alpha, cfg.samplers) == (5, 8, 16.0, ["Euler a", "PLMS"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(_Cfg, None, {"steps": "many"})
    saved = save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(_Cfg, saved) == cfg


def test_manifest_records_config_inputs_and_status(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello")
    with StageRun(tmp_path / "out", "unit", _Cfg(), inputs={"data": src, "base": "org/model"}) as run:
        run.outputs["n"] = 3
    m = read_manifest(tmp_path / "out")
    assert m["stage"] == "unit" and m["status"] == "complete" and m["outputs"] == {"n": 3}
    assert m["inputs"]["data"]["sha256"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert m["inputs"]["base"]["kind"] == "reference" and m["versions"]["torch"]
    import socket  # manifests travel to the Hub with their folders: no machine name in them

    assert set(m["host"]) == {"platform", "python"}
    host = socket.gethostname()
    assert len(host) < 6 or host not in (tmp_path / "out" / "manifest.json").read_text()
    with pytest.raises(RuntimeError), StageRun(tmp_path / "bad", "unit") as run:
        raise RuntimeError("boom")
    assert read_manifest(tmp_path / "bad")["status"] == "failed"


@pytest.mark.parametrize("code,label", [("mel", "malignant"), ("akiec", "malignant"), ("BCC", "malignant"),
                                        ("nv", "benign"), ("bkl", "benign"), ("vasc", "benign"),
                                        ("UNK", None), ("xyz", None)])
def test_binary_label_mapping(code, label):
    assert binary_label(code) == label


def test_label_override():
    assert binary_label("akiec", {"akiec": "exclude"}) is None
    assert binary_label("nv", {"nevus": "malignant"}) == "malignant"


def test_clip_tokenizer_gives_real_ids():
    from dermt2im_hub.testing.tokenizer import load_clip_tokenizer

    tok = load_clip_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_tiny_base_loads_offline_in_a_new_process(tmp_path, run_cli):
    code, out, _ = run_cli("make-tiny-base", tmp_path / "base")
    assert code == 0 and "written" in out
    script = (
        "import sys, torch\n"
        "from diffusers import StableDiffusionPipeline, DiffusionPipeline\n"
        "p = StableDiffusionPipeline.from_pretrained(sys.argv[1])\n"
        "img = p('malignant mole', num_inference_steps=2, height=64, width=64,"
        " generator=torch.Generator().manual_seed(0)).images[0]\n"
        "assert img.size == (64, 64)\n"
        "q = DiffusionPipeline.from_pretrained(sys.argv[1])\n"
        "print(type(q).__name__, q.tokenizer('a photo of a cat').input_ids)\n"
    )
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "base")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "StableDiffusionPipeline [49406, 320, 1125, 539, 320, 2368, 49407]" in res.stdout


def test_tiny_base_is_sd15_shaped(tiny_base):
    cfg = json.loads((tiny_base / "unet" / "config.json").read_text())
    assert cfg["in_channels"] == 4 and cfg["cross_attention_dim"] == 32
    vae = json.loads((tiny_base / "vae" / "config.json").read_text())
    assert len(vae["block_out_channels"]) == 4  # 8x downsampling like SD1.5
    sched = json.loads((tiny_base / "scheduler" / "scheduler_config.json").read_text())
    assert sched["beta_schedule"] == "scaled_linear" and sched["beta_end"] == 0.012
    assert not list(tiny_base.rglob("*.bin"))  # safetensors only


def test_full_size_unet_has_sd15_parameter_count():
    from diffusers import UNet2DConditionModel

    from dermt2im_hub.testing.tiny_base import _unet_kwargs

    with __import__("torch").device("meta"):
        unet = UNet2DConditionModel(**_unet_kwargs(full_size=True))
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 859.5


def test_phantoms_deterministic_and_balanced(tmp_path, run_cli):
    for name in ("a", "b"):
        code, _, _ = run_cli("make-phantoms", tmp_path / name, "--n", "16", "--size", "96", "--seed", "3")
        assert code == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files_a) == 16
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    records = read_records(tmp_path / "a")
    assert sum(r.label == "benign" for r in records) == 8 and sum(r.label == "malignant" for r in records) == 8
    assert all((tmp_path / "a" / r.file_name).is_file() and r.prompt for r in records)
    assert read_manifest(tmp_path / "a")["stage"] == "phantoms"


def test_phantom_classes_differ_visibly(phantom_dir):
    """Malignant phantoms have a more irregular outline and more colours than benign ones."""
    import numpy as np
    from PIL import Image

    records = read_records(phantom_dir)
    spread = {"benign": [], "malignant": []}
    for r in records:
        pixels = np.asarray(Image.open(phantom_dir / r.file_name).convert("RGB"), dtype=np.float32)
        centre = pixels[32:96, 32:96].reshape(-1, 3)
        spread[r.label].append(float(centre.std(axis=0).mean()))
    assert np.mean(spread["malignant"]) > 1.3 * np.mean(spread["benign"])


def test_exclusion_refuses_test_images(phantom_dir):
    records = read_records(phantom_dir)
    exclusion = TestExclusion.from_records(records[:1])
    renamed = ImageRecord.from_dict({**records[0].to_dict(), "image_id": "other", "lesion_id": None})
    with pytest.raises(TestLeakageError, match="same bytes as a test image"):
        assert_no_test_images(phantom_dir, [renamed], exclusion)
    assert assert_no_test_images(phantom_dir, records[1:], exclusion) == len(records) - 1


def test_cli_help_lists_commands(run_cli):
    with pytest.raises(SystemExit):
        run_cli("--help")


def test_cli_help_in_subprocess():
    res = subprocess.run([sys.executable, "-m", "dermt2im_hub", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for command in ("make-tiny-base", "make-phantoms"):
        assert command in res.stdout


def test_cli_reports_user_errors(tmp_path, run_cli):
    code, _, err = run_cli("make-phantoms", tmp_path / "x", "--n", "1")
    assert code == 2 and "num_images must be at least 2" in err
    from dermt2im_hub.manifest import write_manifest

    write_manifest(tmp_path / "data", "preprocess")  # neither command writes over another stage's folder
    for command in ("make-phantoms", "make-tiny-base"):
        code, _, err = run_cli(command, tmp_path / "data")
        assert code == 2 and "holds the output of stage 'preprocess'" in err, err
    (tmp_path / "a_file").write_text("")
    code, _, err = run_cli("make-phantoms", tmp_path / "a_file", "--n", "2")
    assert code == 2 and "a file is where a folder is expected" in err and "Traceback" not in err


def test_option_help_shows_defaults_as_written(capsys):
    from dermt2im_hub.cli import main

    helps = {}
    for command in ("benchmark", "train-lora"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())
    assert "TestSetConfig(" not in helps["benchmark"] and "{'name': 'ISIC'" in helps["benchmark"]
    # a help that says what an unset value means is not followed by "(default: None)"
    assert "default: the one inside train_data_dir --output-dir" in helps["train-lora"]


def test_package_data_paths_exist():
    root = Path(__file__).resolve().parents[1]
    for folder in ("dermt2im_hub", "training_scripts", "dataset_builder", "model_cards", "configs", "bench"):
        assert (root / folder).is_dir(), folder


def test_phantom_skin_tones_fall_in_their_ita_category():
    import math

    from dermt2im_hub.testing.phantoms import SKIN_TONES

    bounds = {"very_light": (55, 90), "light": (41, 55), "intermediate": (28, 41), "tan": (10, 28),
              "brown": (-30, 10), "dark": (-90, -30)}
    for name, (lightness, b) in SKIN_TONES.items():
        ita = math.degrees(math.atan((lightness - 50) / b))
        low, high = bounds[name]
        assert low < ita <= high, (name, ita)


def test_command_line_null_sets_none():
    import argparse

    from dermt2im_hub.config import add_common_config_flags, add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_common_config_flags(parser)
    add_config_arguments(parser, _Cfg)
    args = parser.parse_args(["--seed", "null", "--name", "Euler a", "--steps", "7"])
    cfg = config_from_args(_Cfg, args)
    assert cfg.seed is None and cfg.name == "Euler a" and cfg.steps == 7


def test_override_reaches_list_items():
    from dermt2im_hub.config import deep_merge, parse_overrides

    base = {"run": {"real_sources": [{"name": "isic", "images": None}, {"name": "ham", "images": None}]}}
    merged = deep_merge(base, parse_overrides(["run.real_sources.1.images=/data/ham"]))
    assert merged["run"]["real_sources"] == [{"name": "isic", "images": None}, {"name": "ham", "images": "/data/ham"}]
    with pytest.raises(ConfigError, match="only 2 item"):
        deep_merge(base, parse_overrides(["run.real_sources.5.images=x"]))


def test_weight_file_kinds():
    from dermt2im_hub.utils.files import is_pickle_weight, is_safetensors

    for name in ("unet/diffusion_pytorch_model.bin", "lora.PT", "head.pth", "state.pkl", "x.pickle", "m.ckpt"):
        assert is_pickle_weight(name) and is_pickle_weight(Path(name)) and not is_safetensors(name)
    assert is_safetensors("a/model.safetensors") and not is_pickle_weight("a/model.safetensors")
    # loaders choose their reader by the exact suffix and torch.load anything else
    assert not is_safetensors("model.SAFETENSORS") and not is_safetensors("model.safetensors.bin")


def test_safe_join_keeps_untrusted_names_inside_their_folder(tmp_path):
    from dermt2im_hub.utils.files import safe_join

    root = tmp_path / "folder"
    (root / "benign").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "benign" / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "out").symlink_to(tmp_path)
    assert safe_join(root, "benign/a.png") == root / "benign" / "a.png"
    assert safe_join(str(root), "./benign//a.png") == root / "benign" / "a.png"
    for name in ("../secret.png", str(tmp_path / "secret.png"), "benign/../../secret.png", "benign/link.png",
                 "out/secret.png", "", ".", "a\x00b.png", "x" * 256, "a/" * 600, None, 7, "benign\\a.png"):
        assert safe_join(root, name) is None, name
    assert safe_join(root, "benign\\a.png", windows_separators=True) == root / "benign" / "a.png"
    assert safe_join(root, "..\\secret.png", windows_separators=True) is None


def test_read_records_refuses_rows_pointing_outside_the_folder(tmp_path, phantom_dir):
    from dermt2im_hub.utils.files import read_jsonl, write_jsonl

    rows = read_jsonl(phantom_dir / "metadata.jsonl")
    for name in ("../outside.png", "/etc/hostname"):
        write_jsonl(tmp_path / "metadata.jsonl", [*rows, {**rows[0], "file_name": name}])
        with pytest.raises(ValueError, match="points outside"):
            read_records(tmp_path)
