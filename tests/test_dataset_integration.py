"""A built dataset folder served by a real Hub read API (olah, the `local_hub` fixture) as `org/dermt2im`.

The consumer is a fresh process with only HF_ENDPOINT pointing at the server, using `load_dataset` exactly
as a user would after `dermt2im build-dataset ... --push-to-hub org/dermt2im`.
"""

from __future__ import annotations

import json

import pytest
from test_dataset import build, write_generated_folder

from dermt2im_hub.dataset.layout import sampler_slug
from dermt2im_hub.testing.hub_server import PublishingApi

pytestmark = pytest.mark.integration


_CONSUME = r"""
import json, sys
from datasets import ClassLabel, Image, load_dataset

repo = sys.argv[1]
dataset = load_dataset(repo, "synthetic")  # the builder config is the repo's Hub config
default = load_dataset(repo)  # and its default one
train = dataset["train"]
streamed = list(load_dataset(repo, split="train", streaming=True))
try:
    load_dataset(repo, "a1111")
    other = "loaded"
except ValueError as error:
    other = str(error)
print(json.dumps({
    "splits": {name: split.num_rows for name, split in dataset.items()},
    "default_sha256": list(default["train"]["sha256"]),
    "unknown_config": other,
    "label_is_classlabel": isinstance(train.features["label"], ClassLabel),
    "image_is_image": isinstance(train.features["image"], Image),
    "labels": train.features["label"].names,
    "sizes": sorted({tuple(row["image"].size) for row in train}),
    "samplers": list(train["sampler"]),
    "sha256": list(train["sha256"]),
    "streamed_sha256": [row["sha256"] for row in streamed],
    "streamed_decoded": all(row["image"].size == (64, 64) for row in streamed),
}))
"""


def test_built_folder_loads_from_the_hub_as_org_dermt2im(local_hub, tmp_path):
    from dermt2im_hub.dataset.export import push_dataset
    from dermt2im_hub.utils.files import read_jsonl

    generated = write_generated_folder(tmp_path / "generated", n=6)
    folder = tmp_path / "dermt2im"
    build(generated, folder)
    push_dataset(folder, "org/dermt2im", api=PublishingApi(local_hub))  # through the publishing gate

    result = local_hub.run_python(_CONSUME, "org/dermt2im", timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    # the whole config reads one folder per sampler: rows grouped by sampler, input order within one
    rows = sorted(read_jsonl(generated / "metadata.jsonl"), key=lambda r: (sampler_slug(r["sampler"]) + "/", r["index"]))
    assert seen["splits"] == {"train": 6}
    assert seen["label_is_classlabel"] and seen["image_is_image"] and seen["labels"] == ["benign", "malignant"]
    assert seen["sizes"] == [[64, 64]] and seen["streamed_decoded"]
    assert seen["samplers"] == [r["sampler"] for r in rows]
    assert seen["sha256"] == seen["streamed_sha256"] == seen["default_sha256"] == [r["sha256"] for r in rows]
    assert "synthetic" in seen["unknown_config"] and "a1111" in seen["unknown_config"]
