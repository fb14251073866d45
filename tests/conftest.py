"""Shared fixtures. Everything runs offline: the Hub is never reached from tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Offline before any Hugging Face library is imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DERMT2IM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_hf_home(tmp_path_factory):
    """Tests never read or write the user's Hugging Face cache."""
    home = tmp_path_factory.mktemp("hf-home")
    old = {k: os.environ.get(k) for k in ("HF_HOME", "HF_DATASETS_CACHE")}
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_DATASETS_CACHE"] = str(home / "datasets")
    yield home
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real dermoscopy samples); tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set DERMT2IM_SHARED_DATA to its path)")
    return SHARED_DATA


def shared_subdir(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the real samples in ../shared/data/{name}")
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny SD1.5-shaped pipeline, built once per test run."""
    from dermt2im_hub.testing.tiny_base import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny-base"), seed=0)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """16 phantom images (8 per class, 128 px) in the image-folder format; read-only for tests."""
    from dermt2im_hub.testing.phantoms import PhantomConfig, make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("phantoms"), PhantomConfig(num_images=16, size=128, seed=0),
                         progress=False)


@pytest.fixture
def run_cli(capsys):
    """Run `dermt2im ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from dermt2im_hub.cli import main

    def _run(*argv: str):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run


PYTHON = sys.executable


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory):
    """A real read-only Hub: olah (offline mode) on 127.0.0.1 serving local git repos (contract 5).

    `.endpoint`, `.publish(folder, repo_id, repo_type="model", tag=None) -> commit sha`, `.env()` (variables for
    a consumer process: HF_ENDPOINT, online switches, a fresh HF_HOME), `.run_python(code, *args, timeout=600)`.
    The server stops at the end of the session.
    """
    import importlib.util
    import shutil

    # find_spec, not import: olah runs in its own process and importing it here costs seconds
    if importlib.util.find_spec("olah") is None:
        pytest.skip("the local Hub needs olah (pip install -e '.[dev]')")
    if shutil.which("git") is None:
        pytest.skip("the local Hub serves git repos: git is not installed")
    from dermt2im_hub.testing.hub_server import LocalHubServer

    server = LocalHubServer(tmp_path_factory.mktemp("local-hub"))
    server.start()
    yield server
    server.stop()
