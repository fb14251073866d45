"""The local Hub fixture itself: olah serves what `publish` commits, per revision and tag."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration

_READ_BACK = """
import json, sys
from huggingface_hub import HfApi, ModelCard, hf_hub_download
repo = sys.argv[1]
refs = HfApi().list_repo_refs(repo)
print(json.dumps({
    "latest": open(hf_hub_download(repo, "weights.txt")).read(),
    "tagged": open(hf_hub_download(repo, "weights.txt", revision="v1")).read(),
    "license": ModelCard.load(repo).data.license,
    "tags": [t.name for t in refs.tags],
    "branches": [b.name for b in refs.branches],
    "sha": HfApi().model_info(repo, revision="main").sha,
}))
"""


def test_publish_twice_serves_latest_and_tag(local_hub, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# adapter\n")
    (folder / "weights.txt").write_text("first")
    first = local_hub.publish(folder, "fixture-org/served", tag="v1")
    (folder / "weights.txt").write_text("second")
    second = local_hub.publish(folder, "fixture-org/served")
    assert first != second and len(second) == 40

    result = local_hub.run_python(_READ_BACK, "fixture-org/served", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"latest": "second", "tagged": "first", "license": "mit", "tags": ["v1"],
                    "branches": ["main"], "sha": second}


def test_env_points_consumers_at_the_server_without_tokens(local_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token_for_tests")
    env = local_hub.env()
    assert env["HF_ENDPOINT"] == local_hub.endpoint and env["HF_ENDPOINT"].startswith("http://127.0.0.1:")
    assert env["HF_HUB_OFFLINE"] == "0" and env["HF_HUB_DISABLE_XET"] == "1"
    assert "HF_TOKEN" not in env
    assert env["HF_HOME"] != local_hub.env()["HF_HOME"], "each env() gets a fresh, empty cache"


def test_publish_rejects_bad_repo_ids(local_hub, tmp_path):
    with pytest.raises(ValueError, match="org/name"):
        local_hub.publish(tmp_path, "no-slash")
    with pytest.raises(ValueError, match="repo_type"):
        local_hub.publish(tmp_path, "org/x", repo_type="bucket")
