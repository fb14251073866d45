"""Hub-or-local inputs: local paths win, `org/name@rev` parses, failures explain themselves (offline)."""

from __future__ import annotations

import pytest

from dermt2im_hub.hub.resolve import (
    HubInputError,
    is_hub_id,
    is_remote_hub_id,
    resolve_file,
    resolve_folder,
    split_revision,
)


def test_local_folder_and_file_are_used_as_they_are(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    assert resolve_folder(tmp_path) == tmp_path
    assert resolve_file(tmp_path, "weights.safetensors") == tmp_path / "weights.safetensors"
    with pytest.raises(HubInputError, match="not found"):
        resolve_file(tmp_path, "missing.safetensors")
    with pytest.raises(HubInputError, match="is a file"):
        resolve_folder(tmp_path / "weights.safetensors")


def test_revision_suffix():
    assert split_revision("org/name@v1") == ("org/name", "v1")
    assert split_revision("org/name", "main") == ("org/name", "main")
    assert split_revision("org/name@v1", "v1") == ("org/name", "v1")
    with pytest.raises(HubInputError, match="names revision"):
        split_revision("org/name@v1", "v2")


def test_neither_path_nor_hub_id(tmp_path):
    with pytest.raises(HubInputError, match="not an existing local path"):
        resolve_folder(tmp_path / "nowhere" / "deep")
    with pytest.raises(ValueError, match="repo_type"):
        resolve_folder("org/name", repo_type="bucket")


def test_hub_id_shape(tmp_path, monkeypatch):
    assert is_hub_id("org/name") and is_hub_id("my-org/dermt2im_lora.v1")
    for value in ("name", "org/name/file.safetensors", "../x", "a/..", "org/a..b", "/abs/x", "org\\name", "", None, 3):
        assert not is_hub_id(value), value
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "lora").mkdir(parents=True)
    assert is_hub_id("outputs/lora") and not is_remote_hub_id("outputs/lora")  # an existing local path wins
    assert is_remote_hub_id("org/name")


def test_offline_miss_is_a_clear_error():
    # tests run with HF_HUB_OFFLINE=1 and an empty cache: the download cannot happen, and says why
    with pytest.raises(HubInputError, match="local cache"):
        resolve_folder("some-org/not-cached", revision="v1")
    with pytest.raises(FileNotFoundError):  # HubInputError is a FileNotFoundError: the CLI prints it cleanly
        resolve_file("some-org/not-cached", "README.md")
