"""Round trips through a real Hub read API (olah serving local git repos, the `local_hub` fixture).

A carded output folder is published, then consumed in a fresh process by the real clients exactly as a user
would: diffusers' load_lora_weights(repo, weight_name=...), datasets' load_dataset(repo), ModelCard.load,
downloads at a tag, and this package's resolve_folder/resolve_file.
"""

from __future__ import annotations

import io
import json
import re

import pytest

from dermt2im_hub.hub.cards import render_card
from dermt2im_hub.manifest import write_manifest
from dermt2im_hub.testing.hub_server import PublishingApi
from dermt2im_hub.utils.files import sha256_file

pytestmark = pytest.mark.integration

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _save_random_lora(base_dir, out_dir, seed: int):
    """A LoRA on the tiny base's UNet attention, with random (non-zero) B so it changes the output."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(str(base_dir))
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                        init_lora_weights=False)
    pipe.unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionPipeline.save_lora_weights(str(out_dir), unet_lora_layers=layers, weight_name=WEIGHT_NAME,
                                              safe_serialization=True)
    return out_dir / WEIGHT_NAME


def _lora_folder(tmp_path, tiny_base, seed: int):
    folder = tmp_path / f"lora-{seed}"
    folder.mkdir()
    weights = _save_random_lora(tiny_base, folder, seed)
    facts = {"base_model": str(tiny_base), "instance_prompts": {"benign": "benign mole"},
             "weight_files": {"diffusers": WEIGHT_NAME}, "lora_rank": 4, "lora_alpha": 4}
    write_manifest(folder, "train_lora", config={"seed": seed}, extra={"card": facts})
    render_card(folder, repo_id="test-org/adapter")
    return folder, sha256_file(weights)


_CONSUME_LORA = r"""
import json, os, re, sys
import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from huggingface_hub import ModelCard, hf_hub_download
from dermt2im_hub.hub import resolve_file, resolve_folder
from dermt2im_hub.utils.files import sha256_file

base, repo, weight_name, snippet_dir = sys.argv[1:5]
card = ModelCard.load(repo)

pipe = StableDiffusionPipeline.from_pretrained(base)
pipe.set_progress_bar_config(disable=True)

def generate():
    out = pipe("benign mole", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    return out.images[0]

before = generate()
pipe.load_lora_weights(repo, weight_name=weight_name)
after = generate()

# the card's own how-to-use snippet, run as written
snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
os.chdir(snippet_dir)  # the card names a local base by its last part: run the snippet where that folder is
exec(snippet, {})

print(json.dumps({
    "library_name": card.data.library_name,
    "change": float(np.abs(after - before).mean()),
    "snippet_image": os.path.exists("lesion.png"),
    "latest_sha": sha256_file(hf_hub_download(repo, weight_name)),
    "tagged_sha": sha256_file(hf_hub_download(repo, weight_name, revision="v1")),
    "resolved_tag_sha": sha256_file(resolve_folder(repo + "@v1") / weight_name),
    "resolved_file_sha": sha256_file(resolve_file(repo, weight_name, revision="v1")),
}))
"""


def test_lora_round_trip_through_the_hub_api(local_hub, tiny_base, tmp_path):
    first, first_sha = _lora_folder(tmp_path, tiny_base, seed=1)
    second, second_sha = _lora_folder(tmp_path, tiny_base, seed=2)
    local_hub.publish(first, "test-org/adapter", tag="v1")
    local_hub.publish(second, "test-org/adapter")  # main moves on; v1 keeps the first adapter

    snippet_dir = tmp_path / "user"
    snippet_dir.mkdir()
    (snippet_dir / tiny_base.name).symlink_to(tiny_base, target_is_directory=True)
    result = local_hub.run_python(_CONSUME_LORA, tiny_base, "test-org/adapter", WEIGHT_NAME, snippet_dir,
                                  timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["library_name"] == "diffusers"
    assert seen["change"] > 1e-4, "the adapter loaded from the Hub changes the tiny base's output"
    assert seen["snippet_image"], "the card's snippet ran and saved its image"
    assert seen["latest_sha"] == second_sha != first_sha
    assert seen["tagged_sha"] == seen["resolved_tag_sha"] == seen["resolved_file_sha"] == first_sha


def _dataset_folder(tmp_path):
    """A few rows with Image + ClassLabel features as parquet (image bytes embedded) and a card with configs."""
    import datasets
    import pyarrow.parquet as pq
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["benign", "malignant"]),
                                  "prompt": datasets.Value("string")})
    folder = tmp_path / "dataset"
    (folder / "data").mkdir(parents=True)
    splits = {"train": 4, "test": 2}
    for split, n in splits.items():
        rows = {"image": [Image.new("RGB", (16, 16), (40 * i, 100, 200 - 30 * i)) for i in range(n)],
                "label": [i % 2 for i in range(n)],
                "prompt": [f"{'malignant' if i % 2 else 'benign'} mole" for i in range(n)]}
        path = folder / "data" / f"{split}-00000-of-00001.parquet"
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
        stored = pq.read_table(path).column("image").to_pylist()
        assert all(cell["bytes"] for cell in stored), "image bytes are embedded, not paths"
    facts = {"pretty_name": "round trip", "num_rows": 6, "splits": splits,
             "configs": [{"config_name": "default", "data_files": [
                 {"split": s, "path": f"data/{s}-*.parquet"} for s in splits]}]}
    write_manifest(folder, "build_dataset", extra={"card": facts})
    render_card(folder, repo_id="test-org/dermt2im")
    return folder


_CONSUME_DATASET = r"""
import json, sys
from datasets import load_dataset
from huggingface_hub import DatasetCard

repo = sys.argv[1]
dataset = load_dataset(repo)
train = dataset["train"]
print(json.dumps({
    "splits": {name: split.num_rows for name, split in dataset.items()},
    "labels": train.features["label"].names,
    "first_label": train[1]["label"],
    "image_size": list(train[0]["image"].size),
    "pretty_name": DatasetCard.load(repo).data.pretty_name,
}))
"""


def test_dataset_round_trip_through_load_dataset(local_hub, tmp_path):
    local_hub.publish(_dataset_folder(tmp_path), "test-org/dermt2im", repo_type="dataset", tag="v1")
    result = local_hub.run_python(_CONSUME_DATASET, "test-org/dermt2im", timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"splits": {"train": 4, "test": 2}, "labels": ["benign", "malignant"], "first_label": 1,
                    "image_size": [16, 16], "pretty_name": "round trip"}


def test_card_snippet_names_the_published_repo(tmp_path):
    """The dataset card's snippet is the call the round trip makes."""
    text = (_dataset_folder(tmp_path) / "README.md").read_text()
    assert re.search(r'load_dataset\("test-org/dermt2im"\)', text)
    assert io.StringIO(text).readline().strip() == "---"


_DOWNLOAD_ALL = r"""
import sys
from huggingface_hub import snapshot_download
print(snapshot_download(sys.argv[1]))
"""


def test_pushed_files_hold_no_local_path(local_hub, tmp_path):
    """A pushed folder read back through the Hub API: manifests, configs and metadata name no local path."""
    from pathlib import Path

    from dermt2im_hub.hub.push import push_folder

    data = tmp_path / "alice-clinic" / "ham10000"
    data.mkdir(parents=True)
    folder = tmp_path / "lora"
    write_manifest(folder, "train_lora", config={"train_data_dir": str(data), "base": "org/sd15"},
                   inputs={"train_data": data}, extra={"card": {"training_data": str(data)}})
    (folder / "training_config.yaml").write_text(f"train_data_dir: {data}\n")
    (folder / "metadata.jsonl").write_text(json.dumps({"source": str(data / "x.png")}) + "\n")
    (folder / WEIGHT_NAME).write_bytes(b"\x00weights")
    render_card(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    push_folder(folder, "test-org/redacted", api=PublishingApi(local_hub))

    result = local_hub.run_python(_DOWNLOAD_ALL, "test-org/redacted", timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    snapshot = Path(result.stdout.strip().splitlines()[-1])
    published = {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in snapshot.rglob("*") if p.is_file()}
    assert sorted(published) == sorted(before)
    for name, content in published.items():
        assert str(tmp_path).encode() not in content, name
    assert json.loads(published["manifest.json"])["config"]["train_data_dir"] == "<local>/ham10000"
    assert published[WEIGHT_NAME] == before[WEIGHT_NAME]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "the local folder is unchanged"


_READ_CARD = r"""
import json, sys
from huggingface_hub import ModelCard
card = ModelCard.load(sys.argv[1])
print(json.dumps({"title": card.text.strip().splitlines()[0], "model_name": card.data.model_name,
                  "placeholder": "YOUR_" in card.content, "snippet": sys.argv[1] in card.text}))
"""


def test_a_pushed_card_names_its_repo_on_the_hub(local_hub, tmp_path):
    """`card` without --repo-id writes placeholders locally; what the Hub serves after a push names the repo."""
    from dermt2im_hub.hub.push import push_folder

    folder = tmp_path / "classifier"
    facts = {"model_name": "vit_base_patch16_224",
             "results": [{"test_set": "isic-test", "split": "test", "metrics": {"accuracy": 0.8}}]}
    write_manifest(folder, "train_classifier", extra={"card": facts})
    (folder / "model.safetensors").write_bytes(b"\x00weights")
    assert "YOUR_ORG/YOUR_REPO" in render_card(folder).read_text()
    push_folder(folder, "test-org/derm-vit", api=PublishingApi(local_hub))

    result = local_hub.run_python(_READ_CARD, "test-org/derm-vit", timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["title"].startswith("# derm-vit:")
    assert (seen["model_name"], seen["placeholder"], seen["snippet"]) == ("derm-vit", False, True)
