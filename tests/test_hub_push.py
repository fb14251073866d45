"""Pushing: what would be uploaded, privacy, pickle refusal, retries, no token, no local path anywhere.

The Hub cannot be written to offline (and no writable Hub-compatible server exists), so pushes go to
RecordingHubApiDouble, a stand-in for HfApi that records each call, keeps each repo's visibility the way
create_repo(exist_ok=True) does, and keeps the bytes of the files upload_folder would send (selected with
huggingface_hub's own pattern filter).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects

from dermt2im_hub.hub.push import (
    PushError,
    UnsafeWeightsError,
    files_to_upload,
    is_transient,
    push_folder,
    with_retries,
)
from dermt2im_hub.manifest import tree_fingerprint, write_manifest

FAKE_TOKEN = "hf_DoubleTestTokenThatMustNeverAppear0123"


class RecordingHubApiDouble:
    """Test double of huggingface_hub.HfApi: records create_repo/repo_info/create_branch/hf_hub_download/
    upload_folder calls; `existing` maps repo ids that already exist to their visibility (True: private), which
    create_repo keeps, as the real one does with exist_ok=True; the first `failures` upload attempts raise the
    given errors. `uploaded` is the repo's files: upload_folder adds to them and removes the remote files its
    delete_patterns select (but those it uploads), as the real one does; hf_hub_download reads them."""

    def __init__(self, *args, failures: list[Exception] | None = None, existing: dict[str, bool | None] | None = None,
                 **kwargs):
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}
        self.failures = list(failures or [])
        self.private: dict[str, bool | None] = dict(existing or {})
        self.downloads = Path(tempfile.mkdtemp(prefix="hub-double-"))

    def hf_hub_download(self, *, repo_id, filename, **kwargs):
        from huggingface_hub.errors import RemoteEntryNotFoundError

        self.calls.append(("hf_hub_download", {"repo_id": repo_id, "filename": filename, **kwargs}))
        if filename not in self.uploaded:
            request = httpx.Request("GET", f"https://hub.invalid/{repo_id}/resolve/main/{filename}")
            raise RemoteEntryNotFoundError("404 entry not found", response=httpx.Response(404, request=request))
        path = self.downloads / filename
        path.write_bytes(self.uploaded[filename])
        return str(path)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        self.private.setdefault(repo_id, kwargs.get("private", False))
        return f"https://hub.invalid/{repo_id}"

    def repo_info(self, repo_id, **kwargs):
        self.calls.append(("repo_info", {"repo_id": repo_id, **kwargs}))
        return SimpleNamespace(id=repo_id, private=self.private[repo_id])

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, *, folder_path, ignore_patterns, **kwargs):
        self.calls.append(("upload_folder", {"folder_path": folder_path, "ignore_patterns": list(ignore_patterns),
                                             **kwargs}))
        if self.failures:
            raise self.failures.pop(0)
        root = Path(folder_path)
        paths = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        added = list(filter_repo_objects(paths, ignore_patterns=ignore_patterns + [".git/*", ".cache/huggingface/*"]))
        if kwargs.get("delete_patterns"):
            for path in filter_repo_objects(list(self.uploaded), allow_patterns=kwargs["delete_patterns"]):
                if path not in added:
                    del self.uploaded[path]
        for path in added:
            self.uploaded[path] = (root / path).read_bytes()
        return SimpleNamespace(commit_url=f"https://hub.invalid/{kwargs['repo_id']}/commit/abc123")

    def call(self, name):
        return [kwargs for called, kwargs in self.calls if called == name]


def _http_error(status: int) -> HfHubHTTPError:
    request = httpx.Request("POST", "https://hub.invalid/api/repos/create")
    return HfHubHTTPError(f"{status} error", response=httpx.Response(status, request=request))


@pytest.fixture
def lora_folder(tmp_path):
    """An output folder with everything a training run leaves behind, wanted or not."""
    folder = tmp_path / "lora"
    write_manifest(folder, "train_lora", extra={"card": {"lora_rank": 4}})
    files = {
        "README.md": "# card\n",
        "pytorch_lora_weights.safetensors": "weights",
        "samples/benign-0.png": "png",
        "checkpoints/checkpoint-10/model.safetensors": "ckpt",
        "checkpoint-20/optimizer.bin": "opt",
        "checkpoint-20/random_states_0.pkl": "rng",
        "optimizer.pt": "opt",
        "scheduler.pt": "sched",
        "logs/train_lora/events.out.tfevents.1.host": "tb",
        "train.log": "log",
        ".cache/huggingface/upload/x.metadata": "cache",
        "__pycache__/m.cpython-311.pyc": "pyc",
        ".manifest.json.abc.tmp": "partial",
    }
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_files_to_upload_leave_out_training_debris(lora_folder):
    assert files_to_upload(lora_folder) == ["README.md", "manifest.json", "pytorch_lora_weights.safetensors",
                                            "samples/benign-0.png"]


def test_push_is_private_with_ignore_patterns_and_message(lora_folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    api = RecordingHubApiDouble()
    before = tree_fingerprint(lora_folder)
    info = push_folder(lora_folder, "my-org/adapter", api=api, commit_message="first adapter")
    assert info.commit_url.endswith("/commit/abc123")
    (create,) = api.call("create_repo")
    assert create == {"repo_id": "my-org/adapter", "repo_type": "model", "private": True, "exist_ok": True}
    (upload,) = api.call("upload_folder")
    assert upload["commit_message"] == "first adapter" and upload["revision"] is None
    assert "checkpoint-*" in upload["ignore_patterns"] and "*events.out.tfevents.*" in upload["ignore_patterns"]
    assert sorted(api.uploaded) == ["README.md", "manifest.json", "pytorch_lora_weights.safetensors",
                                    "samples/benign-0.png"]
    assert not api.call("create_branch")
    assert tree_fingerprint(lora_folder) == before, "a push only reads the folder"
    # the token reaches neither the uploaded files nor any file in the folder nor the recorded calls
    assert all(FAKE_TOKEN.encode() not in data for data in api.uploaded.values())
    assert all(FAKE_TOKEN.encode() not in p.read_bytes() for p in lora_folder.rglob("*") if p.is_file())
    assert FAKE_TOKEN not in repr(api.calls)


def test_public_dataset_push_on_a_branch(lora_folder):
    api = RecordingHubApiDouble()
    push_folder(lora_folder, "my-org/data", repo_type="dataset", private=False, revision="v2", api=api)
    assert api.call("create_repo")[0]["private"] is False
    assert api.call("create_branch") == [{"repo_id": "my-org/data", "branch": "v2", "repo_type": "dataset",
                                          "exist_ok": True}]
    assert api.call("upload_folder")[0]["revision"] == "v2"


@pytest.mark.parametrize("name", ["unet/diffusion_pytorch_model.bin", "lora.pt", "head.pth", "state.pkl",
                                  "x.pickle", "model.ckpt"])
def test_pickle_weights_are_refused_before_anything_is_sent(lora_folder, name):
    (lora_folder / name).parent.mkdir(parents=True, exist_ok=True)
    (lora_folder / name).write_bytes(b"pickle")
    api = RecordingHubApiDouble()
    with pytest.raises(UnsafeWeightsError, match=f"refusing to push .*{name}.*safetensors"):
        push_folder(lora_folder, "my-org/adapter", api=api)
    assert api.calls == []


def test_transient_errors_are_retried_with_backoff(lora_folder):
    api = RecordingHubApiDouble(failures=[_http_error(503), httpx.ConnectError("connection reset"),
                                          _http_error(429)])
    delays = []
    info = push_folder(lora_folder, "my-org/adapter", api=api, sleep=delays.append)
    assert info.commit_url and len(api.call("upload_folder")) == 4
    assert delays == [2.0, 4.0, 8.0]
    # each attempt got its own copy of the patterns (upload_folder appends its defaults in place)
    assert all(len(c["ignore_patterns"]) == len(api.call("upload_folder")[0]["ignore_patterns"])
               for c in api.call("upload_folder"))


def test_permanent_errors_fail_at_once_and_leave_the_folder(lora_folder):
    api = RecordingHubApiDouble(failures=[_http_error(403)])
    before = tree_fingerprint(lora_folder)
    with pytest.raises(HfHubHTTPError):
        push_folder(lora_folder, "my-org/adapter", api=api, sleep=lambda s: pytest.fail("no retry on 403"))
    assert len(api.call("upload_folder")) == 1 and tree_fingerprint(lora_folder) == before


def test_retries_give_up_after_the_last_attempt():
    calls = []

    def always_busy():
        calls.append(1)
        raise _http_error(502)

    with pytest.raises(HfHubHTTPError):
        with_retries(always_busy, "upload", attempts=3, sleep=lambda s: None)
    assert len(calls) == 3
    assert is_transient(TimeoutError()) and not is_transient(ValueError()) and not is_transient(_http_error(404))
    from huggingface_hub.errors import OfflineModeIsEnabled

    assert not is_transient(OfflineModeIsEnabled("offline"))  # final, though it is a ConnectionError


def test_bad_inputs(tmp_path, lora_folder):
    with pytest.raises(PushError, match="ORG/NAME"):
        push_folder(lora_folder, "no-org", api=RecordingHubApiDouble())
    for bad in ("a/b/c", "org/name--x", "org/x.git", "org/" + "x" * 100):
        double = RecordingHubApiDouble()
        with pytest.raises(PushError, match="repo id"):
            push_folder(lora_folder, bad, api=double)
        assert not double.calls, bad  # refused before any request
    with pytest.raises(PushError, match="not a folder"):
        push_folder(tmp_path / "missing", "o/n", api=RecordingHubApiDouble())
    (tmp_path / "only-logs").mkdir()
    (tmp_path / "only-logs" / "run.log").write_text("x")
    with pytest.raises(PushError, match="no file to upload"):
        push_folder(tmp_path / "only-logs", "o/n", api=RecordingHubApiDouble())


def test_push_cli(lora_folder, run_cli, monkeypatch, caplog):
    import huggingface_hub

    doubles = []

    def make_double(*args, **kwargs):
        doubles.append(RecordingHubApiDouble())
        return doubles[-1]

    monkeypatch.setattr(huggingface_hub, "HfApi", make_double)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    caplog.set_level(logging.DEBUG)
    code, _, err = run_cli("push", lora_folder, "--repo-id", "my-org/adapter")  # the tests run offline
    assert code == 2 and "HF_HUB_OFFLINE is set" in err and not doubles
    monkeypatch.setattr("dermt2im_hub.hub.online.hub_offline", lambda: False)
    code, out, err = run_cli("push", lora_folder, "--repo-id", "my-org/adapter", "--commit-message", "hello")
    assert code == 0, err
    assert "https://hub.invalid/my-org/adapter/commit/abc123" in out
    assert doubles[0].call("create_repo")[0]["private"] is True
    assert doubles[0].call("upload_folder")[0]["commit_message"] == "hello"
    code, out, err = run_cli("push", lora_folder, "--repo-id", "my-org/adapter", "--public")
    assert code == 0 and doubles[1].call("create_repo")[0]["private"] is False
    assert FAKE_TOKEN not in out + err + caplog.text

    (lora_folder / "bad.pt").write_bytes(b"x")
    code, out, err = run_cli("push", lora_folder, "--repo-id", "my-org/adapter")
    assert code == 2 and "bad.pt" in err and len(doubles) == 2


def test_push_cli_help_and_dry_run(lora_folder, run_cli):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("push", "--help")
    assert exit_info.value.code == 0
    code, out, err = run_cli("push", lora_folder, "--repo-id", "my-org/adapter", "--dry-run")
    assert code == 0, err
    assert "private" in out and "pytorch_lora_weights.safetensors" in out and "optimizer.pt" not in out


def test_hub_errors_become_one_line():
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    from dermt2im_hub.hub.online import hub_error_line

    assert "HF_HUB_OFFLINE is set" in hub_error_line(OfflineModeIsEnabled("offline mode is enabled"))
    response = httpx.Response(401, request=httpx.Request("POST", "https://hub.invalid/api/repos/create"))
    assert hub_error_line(HfHubHTTPError("401 Unauthorized", response=response)).startswith("the Hub refused")
    assert "cannot reach the Hub" in hub_error_line(httpx.ConnectError("refused"))
    assert hub_error_line(ValueError("not a Hub error")) is None


def test_the_double_matches_the_real_hfapi_signatures(lora_folder):
    """The calls recorded by the double must be valid calls of the real HfApi methods."""
    import inspect

    from huggingface_hub import HfApi

    api = RecordingHubApiDouble()
    push_folder(lora_folder, "my-org/data", repo_type="dataset", revision="v2", api=api)
    for name, kwargs in api.calls:
        inspect.signature(getattr(HfApi, name)).bind(None, **kwargs)


def test_push_cli_keeps_the_dataset_memorization_rule(tmp_path, run_cli, monkeypatch):
    """`dermt2im push` on a built dataset applies the dataset stage's publishing rule."""
    import huggingface_hub
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "built"
    (folder / "data" / "synthetic" / "euler").mkdir(parents=True)
    pq.write_table(pa.table({"label": [0, 1], "mem_flagged": [False, True]}),
                   folder / "data" / "synthetic" / "euler" / "train-00000-of-00001.parquet")
    write_manifest(folder, "build_dataset", config={"config_name": "synthetic"})
    (folder / "README.md").write_text("# card\n")
    doubles = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: doubles.append(RecordingHubApiDouble()) or doubles[-1])
    monkeypatch.setattr("dermt2im_hub.hub.online.hub_offline", lambda: False)
    code, _, err = run_cli("push", folder, "--repo-id", "my-org/data")
    assert code == 2 and "memorization" in err and not doubles
    code, out, err = run_cli("push", folder, "--repo-id", "my-org/data", "--allow-memorized")
    assert code == 0, err
    assert doubles[0].call("create_repo")[0]["repo_type"] == "dataset", "the repo type follows the stage"


# ---------------------------------------------------------------------------------------------- local paths

ALICE = "/home/alice/clinic-x"


@pytest.fixture
def provenance_folder(tmp_path):
    """A stage folder whose provenance files name absolute local paths, as real runs write them."""
    folder = tmp_path / "out"
    data = tmp_path / "data"  # an existing input: the manifest records its resolved absolute path
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    write_manifest(folder, "train_lora", config={"train_data_dir": f"{ALICE}/ham10000", "output_dir": str(folder),
                                                 "base": "org/sd15", "samples": "samples/x.png"},
                   inputs={"train_data": data}, extra={"card": {"training_data": f"{ALICE}/ham10000"}})
    (folder / "training_config.yaml").write_text(
        f"train_data_dir: {ALICE}/ham10000\npretrained_model_name_or_path: C:\\Users\\alice\\sd15\n"
        "hub_model_id: org/derm-lora\nlogging_dir: logs\n")
    rows = [{"file_name": "benign/a.png", "source_path": f"{ALICE}/raw/ISIC_1.jpg", "prompt": "benign mole"},
            {"file_name": "malignant/b.png", "source_path": "~/raw/ISIC_2.jpg", "prompt": "and/or 1/2"}]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "report.json").write_text(json.dumps({"examples": {"corrupt": [
        {"path": f"{ALICE}/raw/bad.jpg", "detail": f"cannot identify image file '{ALICE}/raw/bad.jpg'"}]}}))
    (folder / "test_exclusion.json").write_text(json.dumps({"source": f"{ALICE}/prep", "image_ids": ["x"]}))
    (folder / "README.md").write_text("# card\n")
    # a binary file goes as it is, whatever bytes it holds
    (folder / "adapter.safetensors").write_bytes(b"\x00weights " + ALICE.encode())
    return folder


def test_push_redacts_local_paths_and_keeps_the_local_files(provenance_folder, tmp_path):
    before = {p: p.read_bytes() for p in provenance_folder.rglob("*") if p.is_file()}
    api = RecordingHubApiDouble()
    push_folder(provenance_folder, "my-org/adapter", api=api)

    assert {p: p.read_bytes() for p in provenance_folder.rglob("*") if p.is_file()} == before, "local files change"
    assert ALICE.encode() in (provenance_folder / "manifest.json").read_bytes(), "local provenance stays complete"
    text_files = [name for name in api.uploaded if name.endswith((".json", ".jsonl", ".yaml"))]
    assert sorted(text_files) == ["manifest.json", "metadata.jsonl", "report.json", "test_exclusion.json",
                                  "training_config.yaml"]
    for name in text_files:
        data = api.uploaded[name]
        for local in (ALICE, str(tmp_path), "~/raw", "C:\\\\Users", "C:\\Users"):
            assert local.encode() not in data, f"{local} reaches the Hub in {name}"
    assert api.uploaded["adapter.safetensors"] == before[provenance_folder / "adapter.safetensors"]
    card = api.uploaded["README.md"].decode()  # rendered from the manifest for the target repo, no local path
    assert '"my-org/adapter"' in card and "YOUR_ORG" not in card and ALICE not in card

    import yaml

    manifest = json.loads(api.uploaded["manifest.json"])
    assert manifest["config"]["train_data_dir"] == "<local>/ham10000"
    assert manifest["config"]["output_dir"] == "<local>/out"
    assert manifest["config"]["base"] == "org/sd15" and manifest["config"]["samples"] == "samples/x.png"
    assert manifest["inputs"]["train_data"]["path"] == "<local>/data"
    assert manifest["inputs"]["train_data"]["sha256"] == json.loads(before[provenance_folder / "manifest.json"])[
        "inputs"]["train_data"]["sha256"]
    config = yaml.safe_load(api.uploaded["training_config.yaml"])
    assert config == {"train_data_dir": "<local>/ham10000", "pretrained_model_name_or_path": "<local>/sd15",
                      "hub_model_id": "org/derm-lora", "logging_dir": "logs"}
    rows = [json.loads(line) for line in api.uploaded["metadata.jsonl"].decode().splitlines()]
    assert [r["source_path"] for r in rows] == ["<local>/ISIC_1.jpg", "<local>/ISIC_2.jpg"]
    assert [r["prompt"] for r in rows] == ["benign mole", "and/or 1/2"]
    example = json.loads(api.uploaded["report.json"])["examples"]["corrupt"][0]
    assert example == {"path": "<local>/bad.jpg", "detail": "cannot identify image file '<local>/bad.jpg'"}
    assert json.loads(api.uploaded["test_exclusion.json"])["source"] == "<local>/prep"


def test_dry_run_marks_the_redacted_files(provenance_folder, run_cli):
    code, out, err = run_cli("push", provenance_folder, "--repo-id", "my-org/adapter", "--dry-run")
    assert code == 0, err
    assert "manifest.json  (local paths redacted)" in out and "README.md  (card rendered for my-org/adapter)" in out
    assert ALICE not in out


@pytest.mark.parametrize(("text", "published"), [
    ("/home/alice/My Data/x.png", "<local>/x.png"),
    ("C:\\Users\\Alice Smith\\x.png", "<local>/x.png"),
    ("\\\\server\\share\\f.png", "<local>/f.png"),
    ("file:///home/a/b.png", "<local>/b.png"),
    ("~bob/x/y/", "<local>/y"),
    ("/home/a/x.png has the same bytes as /srv/b/y.png", "<local>/x.png has the same bytes as <local>/y.png"),
    ("copy at (/tmp/abc/d.png).", "copy at (<local>/d.png)."),
    ("org/name", "org/name"),
    ("outputs/lora", "outputs/lora"),
    ("https://huggingface.co/org/x/resolve/main/a.png", "https://huggingface.co/org/x/resolve/main/a.png"),
    ("benign/malignant, 1/2, it/s, a / b", "benign/malignant, 1/2, it/s, a / b"),
    ("a prompt with <b>bold</b> and </script>", "a prompt with <b>bold</b> and </script>"),
    ("<local>/x.png and <local>/y", "<local>/x.png and <local>/y"),  # redacting twice changes nothing
    ("OSError: No such file: '/clinic/Jane Doe/scan.png'", "OSError: No such file: '<local>/scan.png'"),
    ("copied /data/Patients/John Smith/a.png to /out/x.png", "copied <local>/a.png to <local>/x.png"),
    ("</home/alice/x>", "<<local>/x>"),
    ("*/logs/*", "*/logs/*"),
    ("//</w>", "//</w>"), ("/@</w>", "/@</w>"), ("////", "////"),
    # names with spaces, commas or apostrophes inside longer text; Windows paths in text; home and file URIs
    ("copied /data/Mary Ann Smith/a.png to out", "copied <local>/a.png to out"),
    ('No such file: "/clinic/O\'Brien Mary/scan.png"', 'No such file: "<local>/scan.png"'),
    ("copied /data/Smith, John/a.png", "copied <local>/a.png"),
    ("C:\\Users\\Alice B Smith\\x.png in text", "<local>/x.png in text"),
    ("see ~alice/notes and ~alice", "see <local>/notes and <local>"),
    ("FILE:///home/a/b.png", "<local>/b.png"), ("foo-file:///home/a/b.png", "<local>/b.png"),
    ("| images | /home/a/x | 1/2 |", "| images | <local>/x | 1/2 |"),
    # not paths: one part, arithmetic, fragments, Markdown links to Hub pages, dates, approximations
    ("(a+b)/2, x[0]/x[1], 50%/50%, #/definitions/x", "(a+b)/2, x[0]/x[1], 50%/50%, #/definitions/x"),
    ("| /n | /imagine dermoscopy, /benign |", "| /n | /imagine dermoscopy, /benign |"),
    ("[docs](/datasets/org/x) on 2026/11/26, ~5 minutes", "[docs](/datasets/org/x) on 2026/11/26, ~5 minutes"),
])
def test_redaction_rules(text, published):
    from dermt2im_hub.hub.redact import redact_text

    assert redact_text(text) == published


def test_paths_in_yaml_comments_json_escapes_and_colliding_keys():
    import json

    from dermt2im_hub.hub.redact import redact_file, redact_value

    assert redact_file("config.yaml", b"rank: 4  # data from /home/alice/clinic-x/ham\n") == (
        b"rank: 4  # data from <local>/ham\n")
    broken = b'{"images": "\\/home\\/alice\\/ham", '  # does not parse: raw text, escapes undone
    assert b"alice" not in redact_file("manifest.json", broken)
    keys = {f"/home/u{i}/same": i for i in range(2000)}  # two paths with one last part keep both entries
    redacted = redact_value(keys)
    assert len(redacted) == 2000 and redacted["<local>/same"] == 0 and redacted["<local>/same (2000)"] == 1999
    assert json.loads(json.dumps(redacted)) == redacted


def test_tokenizer_files_are_never_rewritten_and_markdown_is():
    from dermt2im_hub.hub.redact import redact_file

    vocab = b'{"//</w>": 1, "/@</w>": 2, "/home</w>": 3}'
    assert redact_file("text_encoder/vocab.json", vocab) is None
    assert redact_file("tokenizer/tokenizer.json", vocab) is None
    card = b"# old card\n\nimages: /home/alice/clinic-x/ham\nsee https://hub.invalid/a/b and org/name\n"
    assert redact_file("README.md", card) == (b"# old card\n\nimages: <local>/ham\n"
                                              b"see https://hub.invalid/a/b and org/name\n")


def test_redaction_of_keys_and_unparsable_files():
    from dermt2im_hub.hub.redact import redact_file, redact_value

    assert redact_value({"/a/x": 1, "/b/x": 2, "k": ["/c/y", 3]}) == {"<local>/x": 1, "<local>/x (2)": 2,
                                                                      "k": ["<local>/y", 3]}
    assert redact_file("a.json", b'{"a": "org/name"}') is None, "an unchanged file goes as it is"
    assert redact_file("a.png", b"/home/a/b") is None
    assert redact_file("broken.json", b'{"p": "/home/a/b.png" oops') == b'{"p": "<local>/b.png" oops'


# ---------------------------------------------------------------------------------------------- visibility


def test_a_private_push_into_an_existing_public_repo_is_refused(lora_folder):
    api = RecordingHubApiDouble(existing={"my-org/adapter": False})
    with pytest.raises(PushError, match="repo my-org/adapter: .* already exists and is public"):
        push_folder(lora_folder, "my-org/adapter", api=api)
    assert api.call("repo_info") == [{"repo_id": "my-org/adapter", "repo_type": "model"}]
    assert not api.call("upload_folder") and not api.uploaded

    api = RecordingHubApiDouble(existing={"my-org/adapter": None})  # visibility not reported: not confirmed
    with pytest.raises(PushError, match="does not say whether it is private"):
        push_folder(lora_folder, "my-org/adapter", api=api)
    assert not api.uploaded

    for existing, private in (({"my-org/adapter": False}, False), ({"my-org/adapter": True}, True), ({}, True)):
        api = RecordingHubApiDouble(existing=existing)
        push_folder(lora_folder, "my-org/adapter", private=private, api=api)
        assert api.uploaded, (existing, private)


def test_push_cli_refuses_a_private_push_into_a_public_repo(lora_folder, run_cli, monkeypatch):
    import huggingface_hub

    doubles = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: doubles.append(
        RecordingHubApiDouble(existing={"my-org/adapter": False})) or doubles[-1])
    monkeypatch.setattr("dermt2im_hub.hub.online.hub_offline", lambda: False)
    code, _, err = run_cli("push", lora_folder, "--repo-id", "my-org/adapter")
    assert code == 2 and "already exists and is public" in err and "Traceback" not in err
    assert not doubles[0].uploaded
    code, _, err = run_cli("push", lora_folder, "--repo-id", "my-org/adapter", "--public")
    assert code == 0, err


# ---------------------------------------------------------------------------------------------- real images


@pytest.mark.parametrize(("stage", "config"), [("preprocess", None), ("qa", None),
                                               ("build_dataset", {"config_name": "real"})])
def test_push_cli_wants_a_flag_for_real_images(tmp_path, run_cli, monkeypatch, stage, config):
    import huggingface_hub

    folder = tmp_path / stage
    write_manifest(folder, stage, config=config)
    (folder / "benign").mkdir()
    (folder / "benign" / "ISIC_1.png").write_bytes(b"png")
    (folder / ".preprocess-journal.jsonl").write_text('{"source": "/home/alice/raw/ISIC_1.jpg"}\n')
    expected = ["README.md", "benign/ISIC_1.png", "manifest.json"]  # the card is rendered for the repo
    if stage == "build_dataset":  # the dataset stage's own rule reads the shards
        import pyarrow as pa
        import pyarrow.parquet as pq

        (folder / "data" / "real").mkdir(parents=True)
        pq.write_table(pa.table({"label": [0], "mem_flagged": [False]}),
                       folder / "data" / "real" / "train-00000-of-00001.parquet")
        # one config of a repo that may hold several: everything of it under data/real/ (hub.configs)
        expected = ["README.md", "data/real/benign/ISIC_1.png", "data/real/manifest.json",
                    "data/real/train-00000-of-00001.parquet"]
    doubles = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: doubles.append(RecordingHubApiDouble()) or doubles[-1])
    monkeypatch.setattr("dermt2im_hub.hub.online.hub_offline", lambda: False)
    for extra in ([], ["--dry-run"]):
        code, out, err = run_cli("push", folder, "--repo-id", "my-org/data", *extra)
        assert code == 2 and "real patient-derived images" in err and "--allow-real-images" in err, err
        assert not doubles and not out
    code, out, err = run_cli("push", folder, "--repo-id", "my-org/data", "--allow-real-images", "--dry-run")
    assert code == 0 and "benign/ISIC_1.png" in out and "journal" not in out, err
    code, out, err = run_cli("push", folder, "--repo-id", "my-org/data", "--allow-real-images")
    assert code == 0, err
    assert sorted(doubles[0].uploaded) == expected


def test_pushing_a_parent_folder_does_not_bypass_the_real_image_rule(tmp_path, run_cli, lora_folder):
    """`dermt2im push RUN_ROOT` would upload data/<source>/ too: every stage folder inside is checked."""
    import shutil

    root = tmp_path / "run"
    shutil.copytree(lora_folder, root / "lora")
    write_manifest(root / "data" / "isic", "preprocess")
    (root / "data" / "isic" / "benign").mkdir()
    (root / "data" / "isic" / "benign" / "ISIC_1.png").write_bytes(b"png")
    code, out, err = run_cli("push", root, "--repo-id", "my-org/run", "--dry-run")
    assert code == 2 and "inside it: data/isic" in err and "--allow-real-images" in err and not out
    code, out, err = run_cli("push", root, "--repo-id", "my-org/run", "--dry-run", "--allow-real-images")
    assert code == 0 and "data/isic/benign/ISIC_1.png" in out, err
    code, out, err = run_cli("push", root / "lora", "--repo-id", "my-org/run", "--dry-run")
    assert code == 0, err


def test_phantom_folders_are_not_real_images_and_data_stages_default_to_dataset_repos(tmp_path, run_cli):
    """The demo's preprocess and real-dataset folders come from procedural phantoms: no patient behind them,
    so no --allow-real-images; a preprocess folder of real images (or of images whose origin cannot be
    followed) still needs it. Stages that hold images or tables push to dataset repos by default."""
    write_manifest(tmp_path / "phantoms", "phantoms")
    for name, images in (("pre-phantoms", tmp_path / "phantoms"), ("pre-real", tmp_path / "isic")):
        write_manifest(tmp_path / name, "preprocess", config={"source": "folder", "images": str(images)})
        (tmp_path / name / "benign").mkdir()
        (tmp_path / name / "benign" / "x.png").write_bytes(b"png")
    write_manifest(tmp_path / "real-set", "build_dataset", config={"config_name": "real"},
                   inputs={"input_0": tmp_path / "pre-phantoms"})
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "real-set" / "data" / "real").mkdir(parents=True)
    pq.write_table(pa.table({"label": [0]}), tmp_path / "real-set" / "data" / "real" / "train-00000-of-00001.parquet")
    for folder in ("pre-phantoms", "real-set"):
        code, out, err = run_cli("push", tmp_path / folder, "--repo-id", "my-org/demo", "--dry-run")
        assert code == 0 and "to dataset repo my-org/demo" in out, err
    code, _, err = run_cli("push", tmp_path / "pre-real", "--repo-id", "my-org/demo", "--dry-run")
    assert code == 2 and "--allow-real-images" in err


def test_generated_folders_annotated_by_qa_follow_the_dataset_rules(tmp_path, run_cli):
    """A generation folder after QA: a flagged image needs --allow-memorized, the audit's nearest real image
    (a training-set member's name) needs --allow-real-images, and the .generate/ state never goes up."""
    import json

    folder = tmp_path / "generated"
    write_manifest(folder, "generate")
    (folder / "benign").mkdir()
    (folder / "benign" / "00000-1.png").write_bytes(b"png")
    (folder / ".generate").mkdir()
    (folder / ".generate" / "rows-rank0.jsonl").write_text("{}\n")
    rows = [{"file_name": "benign/00000-1.png", "label": "benign", "mem_flagged": True,
             "mem_nearest_id": "DOE_Jane_MRN123"}]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli("push", folder, "--repo-id", "my-org/gen", "--dry-run")
    assert code == 2 and "--allow-memorized" in err and "DOE_Jane" not in err
    code, out, err = run_cli("push", folder, "--repo-id", "my-org/gen", "--dry-run", "--allow-memorized")
    assert code == 2 and "mem_nearest_id" in err and "--allow-real-images" in err and "DOE_Jane" not in err
    code, out, err = run_cli("push", folder, "--repo-id", "my-org/gen", "--dry-run", "--allow-memorized",
                             "--allow-real-images")
    assert code == 0 and "metadata.jsonl" in out and ".generate" not in out, err
    assert "to dataset repo" in out


def test_hidden_journals_are_not_uploaded(lora_folder):
    (lora_folder / ".preprocess-journal.jsonl").write_text("{}\n")
    (lora_folder / "samples" / ".generate-journal.jsonl").write_text("{}\n")
    assert not [p for p in files_to_upload(lora_folder) if "journal" in p]


def test_dry_run_checks_the_repo_id_first(lora_folder, run_cli):
    for bad in ("../../etc", "org/x--y", "no-org"):
        code, out, err = run_cli("push", lora_folder, "--repo-id", bad, "--dry-run")
        assert code == 2 and "--repo-id" in err and not out, (bad, err)


def test_redaction_stays_linear_on_adversarial_text():
    """Prompts from PNG files are untrusted and land in pushed JSON: a 64 KiB text built to make a
    backtracking pattern quadratic (a quote, a slash, no closing quote) must be redacted at once."""
    import subprocess
    import sys

    code = ("from dermt2im_hub.hub.redact import redact_text\n"
            "for text in [\"'/\" + 'a' * 65536, '\"/' + 'ab c/' * 13000, ' /x' * 20000]:\n"
            "    redact_text(text)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)  # quadratic: minutes; linear: ~0.1 s
