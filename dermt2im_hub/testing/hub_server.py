"""A real, local, read-only Hub for integration tests: `olah` in offline mode serving local git repos.

No writable Hub-compatible server runs offline, but olah (offline mode) answers the Hub's read API for git
repos laid out as `<mirrors>/{models,datasets}/<org>/<repo>/`. A consumer pointed at it through
`HF_ENDPOINT` uses the real huggingface_hub / diffusers / datasets code paths: hf_hub_download,
snapshot_download, ModelCard.load, list_repo_refs, model_info(revision=...), load_dataset(repo),
load_lora_weights(repo, weight_name=...). Writes, whoami, list_models and model_info without a revision fail.

    with LocalHubServer(tmp_path) as hub:
        sha = hub.publish(lora_dir, "org/adapter", tag="v1")
        result = hub.run_python("from huggingface_hub import hf_hub_download; print(hf_hub_download('org/adapter', 'README.md'))")

Consumers run in a fresh Python process (`run_python` / `env()`), because huggingface_hub reads
HF_ENDPOINT and the offline switches once, at import time, and the test process itself stays offline.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_TYPE_FOLDERS = {"model": "models", "dataset": "datasets", "space": "spaces"}

# Fixed identity and dates so commits do not depend on the machine's git config.
_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "dermt2im-tests",
    "GIT_AUTHOR_EMAIL": "tests@dermt2im.invalid",
    "GIT_COMMITTER_NAME": "dermt2im-tests",
    "GIT_COMMITTER_EMAIL": "tests@dermt2im.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}

# Token variables are dropped from consumer environments: the local server accepts any token, and a real
# one must never travel to a test server or into a subprocess log.
_TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")


class LocalHubError(RuntimeError):
    """The local Hub server could not start, or a publish failed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _olah_config_text(host: str, port: int, repos_path: Path, mirrors_path: Path) -> str:
    """olah's TOML config: offline (never reach huggingface.co), serve only the local mirrors, and no metadata
    cache so a second publish of the same repo is visible at once."""
    return "\n".join([
        "[basic]",
        f'host = "{host}"',
        f"port = {port}",
        f'repos-path = "{repos_path.as_posix()}"',
        f'mirrors-path = ["{mirrors_path.as_posix()}"]',
        f'mirror-netloc = "{host}:{port}"',
        f'mirror-lfs-netloc = "{host}:{port}"',
        "metadata-cache-ttl = 0",
        "",
        "[accessibility]",
        "offline = true",
        "",
    ])


class LocalHubServer:
    """olah on 127.0.0.1 (a free port) serving git repos under `root/mirrors`; start/stop or use `with`."""

    def __init__(self, root: str | os.PathLike, host: str = "127.0.0.1", port: int | None = None,
                 startup_timeout: float = 60.0):
        self.root = Path(root)
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.mirrors = self.root / "mirrors"
        self._process: subprocess.Popen | None = None
        self._log_file = None
        self._home_counter = itertools.count()

    # ------------------------------------------------------------------ lifecycle

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise LocalHubError("the local Hub server is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "olah.log"

    def start(self) -> LocalHubServer:
        if self._process is not None:
            return self
        for folder in REPO_TYPE_FOLDERS.values():
            (self.mirrors / folder).mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        config = self.root / "olah.toml"
        config.write_text(_olah_config_text(self.host, self.port, self.root / "cache", self.mirrors))
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "olah.server", "--config", str(config), "--log-path", str(self.root / "logs")],
            cwd=self.root, stdout=self._log_file, stderr=subprocess.STDOUT, env=_server_env(),
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LocalHubError(f"olah exited with code {self._process.returncode}:\n{self.log_tail()}")
            if self._responds():
                return
            time.sleep(0.2)
        raise LocalHubError(f"olah did not answer on {self.endpoint} within {self.startup_timeout:.0f} s:\n"
                            f"{self.log_tail()}")

    def _responds(self) -> bool:
        # Any HTTP answer (even a 404 for this unknown repo) means the server is up.
        probe = f"{self.endpoint}/api/models/dermt2im-probe/none/revision/main"
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP(S)_PROXY
        try:
            with direct.open(probe, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> LocalHubServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------ publishing

    def repo_path(self, repo_id: str, repo_type: str = "model") -> Path:
        if repo_type not in REPO_TYPE_FOLDERS:
            raise ValueError(f"repo_type must be one of {sorted(REPO_TYPE_FOLDERS)}, got {repo_type!r}")
        org, sep, name = repo_id.partition("/")
        if not sep or not org or not name or "/" in name or ".." in repo_id:
            raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
        return self.mirrors / REPO_TYPE_FOLDERS[repo_type] / org / name

    def publish(self, folder: str | os.PathLike, repo_id: str, repo_type: str = "model",
                tag: str | None = None, message: str | None = None) -> str:
        """Commit `folder`'s files as the new state of `repo_id` on branch `main` (optionally tagged);
        returns the commit sha. Publishing the same repo again adds a commit, like a second push."""
        folder = Path(folder)
        if not folder.is_dir():
            raise LocalHubError(f"cannot publish {folder}: not a folder")
        repo = self.repo_path(repo_id, repo_type)
        if not (repo / ".git").is_dir():
            repo.mkdir(parents=True, exist_ok=True)
            # olah answers 401 for every `main` request when the branch has another name
            self._git(repo, "init", "--quiet", "--initial-branch=main")
        _replace_worktree(repo, folder)
        self._git(repo, "add", "--all", "--force")
        self._git(repo, "commit", "--quiet", "--allow-empty", "-m", message or f"publish {folder.name}")
        if tag:
            self._git(repo, "tag", "--force", tag)
        return self._git(repo, "rev-parse", "HEAD").strip()

    @staticmethod
    def _git(repo: Path, *args: str) -> str:
        env = {**os.environ, **_GIT_IDENTITY}
        result = subprocess.run(["git", "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false", *args],
                                cwd=repo, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise LocalHubError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
        return result.stdout

    # ------------------------------------------------------------------ consumers

    def env(self, hf_home: str | os.PathLike | None = None) -> dict[str, str]:
        """Environment for a consumer process: online against this server only, a fresh empty HF_HOME (so
        every file really comes through the server), LFS instead of Xet, and no token variables."""
        if hf_home is None:
            hf_home = self.root / "hf-homes" / f"home-{next(self._home_counter)}"
        hf_home = Path(hf_home)
        hf_home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _TOKEN_VARIABLES}
        env.update({
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "DIFFUSERS_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(hf_home / "hub"),
            "HF_DATASETS_CACHE": str(hf_home / "datasets"),
            "HF_XET_CACHE": str(hf_home / "xet"),
            "NO_PROXY": _no_proxy(env.get("NO_PROXY")),
            "no_proxy": _no_proxy(env.get("no_proxy")),
            "TOKENIZERS_PARALLELISM": "false",
        })
        for cache_variable in ("HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "DIFFUSERS_CACHE"):
            env.pop(cache_variable, None)
        return env

    def run_python(self, code: str, *args: str, timeout: float = 600, env: dict[str, str] | None = None,
                   check: bool = False) -> subprocess.CompletedProcess:
        """Run `python -c code args...` in a fresh process with `env()`; stdout/stderr captured as text."""
        result = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env or self.env(),
                                capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if check and result.returncode != 0:
            raise LocalHubError(f"consumer process failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result


class PublishingApi:
    """What push_folder asks of HfApi, answered by the local Hub (olah is read-only, so commits are made by
    `local_hub.publish`): `hf_hub_download` reads the served repo, and upload_folder has the real one's semantics,
    which add to the repo: the new tree is the repo's files, less those `delete_patterns` select that are not
    uploaded again, plus the upload."""

    def __init__(self, local_hub):
        self.local_hub = local_hub

    def create_repo(self, repo_id, **kwargs):
        return f"{self.local_hub.endpoint}/{repo_id}"

    def repo_info(self, repo_id, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(id=repo_id, private=True)

    def hf_hub_download(self, *, repo_id, filename, repo_type="model", **kwargs):
        import httpx
        from huggingface_hub.errors import RemoteEntryNotFoundError

        path = self.local_hub.repo_path(repo_id, repo_type) / filename
        if not path.is_file():
            request = httpx.Request("GET", f"{self.local_hub.endpoint}/{repo_id}/resolve/main/{filename}")
            raise RemoteEntryNotFoundError("404 entry not found", response=httpx.Response(404, request=request))
        return str(path)

    def upload_folder(self, *, repo_id, folder_path, repo_type="model", ignore_patterns=None, delete_patterns=None,
                      **kwargs):
        import shutil
        import tempfile
        from types import SimpleNamespace

        from huggingface_hub.utils import filter_repo_objects
        from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

        source, repo = Path(folder_path), self.local_hub.repo_path(repo_id, repo_type)
        added = set(filter_repo_objects(_files(source), ignore_patterns=list(ignore_patterns or [])
                                        + DEFAULT_IGNORE_PATTERNS))
        current = _files(repo) if repo.is_dir() else []
        deleted = set(filter_repo_objects(current, allow_patterns=delete_patterns)) if delete_patterns else set()
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp)
            for path, root in [*((p, repo) for p in current if p not in deleted | added), *((p, source) for p in added)]:
                (tree / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / path, tree / path)
            sha = self.local_hub.publish(str(tree), repo_id, repo_type=repo_type)
        return SimpleNamespace(commit_url=f"{self.local_hub.endpoint}/{repo_id}/commit/{sha}")


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and ".git" not in p.relative_to(root).parts)


def _no_proxy(existing: str | None) -> str:
    hosts = ["127.0.0.1", "localhost"]
    if existing:
        hosts.append(existing)
    return ",".join(hosts)


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _TOKEN_VARIABLES}
    env["NO_PROXY"] = _no_proxy(env.get("NO_PROXY"))
    env["no_proxy"] = _no_proxy(env.get("no_proxy"))
    return env


def _replace_worktree(repo: Path, folder: Path) -> None:
    """Make the repo's working tree an exact copy of `folder` (deleted files disappear in the next commit)."""
    for entry in repo.iterdir():
        if entry.name == ".git":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for source in folder.iterdir():
        if source.name == ".git":
            continue
        target = repo / source.name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(".git"))
        else:
            shutil.copy2(source, target)
