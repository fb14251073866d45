"""LoRA stage, in-process: config and recipe sections, input checks that run before training, the kohya
converter, the seeded data order. The real `accelerate launch` runs are in test_training_launch.py."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from dermt2im_hub.config import ConfigError, load_config
from dermt2im_hub.records import TestExclusion, read_records
from dermt2im_hub.training.config import TrainLoraConfig
from dermt2im_hub.training.launch import main, normalize_argv, parse_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def four_phantoms(tmp_path_factory) -> Path:
    from dermt2im_hub.testing.phantoms import PhantomConfig, make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("ph4"), PhantomConfig(num_images=4, size=64, seed=1),
                         progress=False)


def _run(tmp_path, base, data, *extra, capsys):
    out = tmp_path / "out"
    code = main(["--pretrained_model_name_or_path", str(base), "--train_data_dir", str(data),
                 "--output_dir", str(out), "--resolution", "64", "--max_train_steps", "1", *map(str, extra)])
    return code, capsys.readouterr().err, out


@pytest.mark.parametrize("recipe", ["paper.yaml", "demo.yaml"])
def test_recipe_training_section_loads_and_validates(recipe):
    config = load_config(TrainLoraConfig, REPO / "configs" / recipe, section="training")
    if recipe == "paper.yaml":  # the Derm-T2IM recipe (DESIGN.md)
        assert (config.train_batch_size, config.num_train_epochs, config.gradient_accumulation_steps) == (2, 120, 1)
        assert (config.optimizer, config.learning_rate, config.lr_scheduler) == ("adamw_8bit", 1e-4,
                                                                                "constant_with_warmup")
        assert (config.mixed_precision, config.resolution) == ("fp16", 512)
        assert not config.train_text_encoder and not config.with_prior_preservation
        assert config.pretrained_model_name_or_path == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_diffusers_flag_spellings_and_aliases():
    argv = normalize_argv(["--instance_data_dir=x", "--train_batch_size", "3", "--use_8bit_adam",
                           "--validation_prompt", "a mole, on the neck", "--push_to_hub"])
    assert argv == ["--train-data-dir=x", "--train-batch-size", "3", "--optimizer", "adamw_8bit",
                    "--validation-prompts", '["a mole, on the neck"]', "--push-to-hub"]
    config = parse_config(["--instance_data_dir", "d", "--validation_prompt", "a mole, on the neck",
                           "--rank", "8", "--mixed_precision", "bf16", "--config", str(REPO / "configs/paper.yaml")])
    assert (config.train_data_dir, config.validation_prompts, config.rank) == ("d", ["a mole, on the neck"], 8)
    assert config.mixed_precision == "bf16" and config.num_train_epochs == 120  # flags override the recipe
    with pytest.raises(ConfigError, match="hf auth login"):
        normalize_argv(["--hub_token", "secret"])
    with pytest.raises(ConfigError, match="hub_model_id must look like ORG/NAME"):  # before, not after, training
        parse_config(["--instance_data_dir", "d", "--push_to_hub", "--hub_model_id", "org/lora/v1"])


@pytest.mark.parametrize("case,expected", [
    ("missing", "train_data_dir not found"),
    ("empty", "train_data_dir is empty"),
    ("no_images", "no images"),
    ("no_prompt", "--instance_prompt"),
    ("resolution", "multiple of 8"),
    ("unknown_key", "unknown key 'learning_rat'"),
    ("not_sd", "is not a Stable Diffusion 1.x/2.x pipeline"),
    ("no_index", "no model_index.json"),
    ("8bit", "needs bitsandbytes"),
    ("push_offline", "HF_HUB_OFFLINE is set"),  # said before training, not after its last step
])
def test_bad_input_fails_before_training(case, expected, tmp_path, tiny_base, four_phantoms, capsys):
    data, base, extra = four_phantoms, tiny_base, []
    if case == "missing":
        data = tmp_path / "nowhere"
    elif case == "empty":
        data = tmp_path / "empty"
        data.mkdir()
    elif case in ("no_images", "no_prompt"):
        data = tmp_path / "plain"
        data.mkdir()
        (data / "notes.txt").write_text("not an image")
        if case == "no_prompt":
            shutil.copy(four_phantoms / read_records(four_phantoms)[0].file_name, data / "a.png")
    elif case == "resolution":
        extra = ["--resolution", "60"]
    elif case == "unknown_key":
        (tmp_path / "c.yaml").write_text("training:\n  learning_rat: 1.0e-4\n")
        extra = ["--config", tmp_path / "c.yaml"]
    elif case == "not_sd":
        base = tmp_path / "sdxl"
        base.mkdir()
        index = json.loads((tiny_base / "model_index.json").read_text())
        index.update(_class_name="StableDiffusionXLPipeline", text_encoder_2=["transformers", "CLIPTextModel"])
        (base / "model_index.json").write_text(json.dumps(index))
    elif case == "no_index":
        base = tmp_path / "unet_only"
        shutil.copytree(tiny_base / "unet", base / "unet")
    elif case == "8bit":
        if importlib.util.find_spec("bitsandbytes"):
            pytest.skip("bitsandbytes is installed here")
        extra = ["--use_8bit_adam"]
    elif case == "push_offline":
        extra = ["--push_to_hub", "--hub_model_id", "org/derm-lora"]
    code, err, out = _run(tmp_path, base, data, *extra, capsys=capsys)
    assert code == 2 and expected in err, err
    assert not (out / "manifest.json").exists()  # nothing was trained or written


def test_refuses_another_stages_folder_as_data_or_output(tmp_path, tiny_base, four_phantoms, capsys):
    from dermt2im_hub.manifest import read_manifest, write_manifest

    built = tmp_path / "built"  # a build-dataset folder given as training data (it holds a PNG grid)
    write_manifest(built, "build_dataset", {})
    shutil.copy(four_phantoms / read_records(four_phantoms)[0].file_name, built / "sample_grid.png")
    code, err, _ = _run(tmp_path, tiny_base, built, "--instance_prompt", "a mole", capsys=capsys)
    assert code == 2 and "output of stage 'build_dataset', not an image folder" in err, err
    preprocessed = tmp_path / "out"  # training into a data-stage folder would overwrite its manifest
    write_manifest(preprocessed, "preprocess", {})
    code, err, _ = _run(tmp_path, tiny_base, four_phantoms, capsys=capsys)
    assert code == 2 and "holds the output of stage 'preprocess'" in err, err
    assert read_manifest(preprocessed)["stage"] == "preprocess"


def test_refuses_a_folder_holding_a_test_split_image(tmp_path, tiny_base, four_phantoms, capsys):
    data = tmp_path / "data"
    shutil.copytree(four_phantoms, data)
    records = read_records(data)
    TestExclusion.from_records(records[:1]).save(data / "test_exclusion.json")
    code, err, out = _run(tmp_path, tiny_base, data, capsys=capsys)
    assert code == 2 and "held-out test split" in err and records[0].image_id in err
    assert not out.exists() or not any(out.iterdir())
    # the same image excluded through an explicit list elsewhere (a renamed copy: caught by its bytes)
    (data / "test_exclusion.json").unlink()
    renamed = TestExclusion(sha256={records[1].sha256})
    renamed.save(tmp_path / "elsewhere.json")
    code, err, _ = _run(tmp_path, tiny_base, data, "--test_exclusion", tmp_path / "elsewhere.json", capsys=capsys)
    assert code == 2 and "same bytes as a test image" in err


def test_split_rows_and_plain_instance_folder(tmp_path, four_phantoms):
    from dermt2im_hub.records import write_records
    from dermt2im_hub.training.inputs import collect_training_data

    data = tmp_path / "split"
    shutil.copytree(four_phantoms, data)
    records = read_records(data)
    for record, split in zip(records, ["train", "test", "validation", None]):
        record.split = split
    write_records(data, records)
    # the test row is in the folder but not trained on; its exclusion list does not refuse the others
    TestExclusion.from_records([records[1]]).save(data / "test_exclusion.json")
    found = collect_training_data(str(data))
    assert [e.image_id for e in found.examples] == [records[0].image_id, records[3].image_id]
    assert found.skipped_by_split == {"test": 1, "validation": 1} and found.test_exclusion_checked

    plain = tmp_path / "plain"
    plain.mkdir()
    for record in records[:2]:
        shutil.copy(data / record.file_name, plain / Path(record.file_name).name)
    found = collect_training_data(str(plain), instance_prompt="a photo of sks mole")
    assert found.layout == "instance_folder" and found.prompts == ["a photo of sks mole"]
    assert len(found.examples) == 2 and not found.test_exclusion_checked


def test_peft_to_kohya_names_and_alpha():
    from dermt2im_hub.training.lora import canonical_text_encoder_name, peft_to_kohya

    a, b = torch.ones(4, 32), torch.zeros(32, 4)
    unet = peft_to_kohya({"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_A.weight": a,
                          "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight": b},
                         "lora_unet_", 8.0)
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    assert set(unet) == {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"}
    assert unet[f"{stem}.alpha"].item() == 8.0 and unet[f"{stem}.lora_down.weight"] is a
    te = peft_to_kohya({"encoder.layers.1.self_attn.q_proj.lora_A.weight": a}, "lora_te_", 4,
                       rename=canonical_text_encoder_name)
    assert "lora_te_text_model_encoder_layers_1_self_attn_q_proj.lora_down.weight" in te
    with pytest.raises(ValueError, match="not a LoRA A/B weight"):
        peft_to_kohya({"x.lora_magnitude_vector": a}, "lora_unet_", 4)


def test_epoch_sampler_shards_and_reproduces():
    from dermt2im_hub.training.step import EpochSampler

    ranks = [EpochSampler(10, 2, num_processes=2, process_index=r, seed=3, random_flip=True) for r in range(2)]
    assert ranks[0].steps_per_epoch == 3  # 10 examples, global batch 4: the last batch wraps around
    epoch0 = [ranks[r].plan(m).indices.tolist() for m in range(3) for r in range(2)]
    flat = [i for batch in epoch0 for i in batch]
    assert set(flat) == set(range(10)) and len(flat) == 12
    again = EpochSampler(10, 2, num_processes=2, process_index=1, seed=3, random_flip=True)
    assert torch.equal(again.plan(4).indices, ranks[1].plan(4).indices)  # stateless: resume needs only the step
    assert torch.equal(again.plan(4).views, ranks[1].plan(4).views)
    assert ranks[0].plan(0).indices.tolist() != ranks[0].plan(3).indices.tolist()  # epochs reshuffle


def test_train_lora_cli_help_and_errors(run_cli, tmp_path):
    with pytest.raises(SystemExit):
        run_cli("train-lora", "--help")
    code, _, err = run_cli("train-lora", "--train-data-dir", tmp_path / "missing", "--resolution", "64")
    assert code == 2 and "train_data_dir not found" in err
    # diffusers' spellings work through `dermt2im train-lora` too, as in train_lora.py
    code, _, err = run_cli("--log-level", "WARNING", "train-lora", "--instance_data_dir", tmp_path / "missing",
                           "--output_dir", tmp_path / "out")
    assert code == 2 and "train_data_dir not found" in err
    code, _, err = run_cli("train-lora", "--hub_token", "secret")
    assert code == 2 and "hf auth login" in err and "secret" not in err


def test_resume_loads_only_this_runs_own_checkpoints(tmp_path):
    from dermt2im_hub.training.checkpoints import find_resume_checkpoint
    from dermt2im_hub.training.inputs import TrainingInputError

    out = tmp_path / "run"
    assert find_resume_checkpoint("latest", out) is None
    for step in (2, 10):
        (out / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    own = out / "checkpoints" / "checkpoint-2"
    assert find_resume_checkpoint("latest", out) == out / "checkpoints" / "checkpoint-10"
    assert find_resume_checkpoint("checkpoint-2", out) == own
    assert find_resume_checkpoint(str(own), out) == own
    # accelerate unpickles a checkpoint's optimizer/RNG states: a folder from anywhere else is refused
    foreign = tmp_path / "downloaded" / "checkpoints" / "checkpoint-5"
    foreign.mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-99").symlink_to(foreign)
    for spec in (str(foreign), "checkpoint-99", "../../downloaded/checkpoints/checkpoint-5", str(out / "checkpoints")):
        with pytest.raises(TrainingInputError, match="output folder"):
            find_resume_checkpoint(spec, out)
    with pytest.raises(TrainingInputError, match="not found"):
        find_resume_checkpoint("checkpoint-7", out)
    with pytest.raises(TrainingInputError, match="output folder"):  # the newest is that symlink
        find_resume_checkpoint("latest", out)


def test_kohya_metadata_names_a_local_base_model_by_its_last_part(tmp_path):
    """The kohya file's safetensors metadata is published with the adapter: no local directory layout in it."""
    from types import SimpleNamespace

    from dermt2im_hub.training.lora import kohya_metadata

    unet = SimpleNamespace(r=4, lora_alpha=4)
    assert kohya_metadata(unet, None, "/home/alice/models/sd15", 512)["ss_sd_model_name"] == "sd15"
    assert kohya_metadata(unet, None, "C:\\models\\sd15.safetensors", 512)["ss_sd_model_name"] == "sd15.safetensors"
    assert kohya_metadata(unet, None, str(tmp_path), 512)["ss_sd_model_name"] == tmp_path.name
    hub_id = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert kohya_metadata(unet, None, hub_id, 512)["ss_sd_model_name"] == hub_id
