"""Loading the base model and LoRA adapters (safetensors only), with the hashes provenance needs.

Base model (`--base`), one of:
- a Hub id (`org/name`, optional `--base-revision`): its diffusers files are fetched with
  `snapshot_download` (safetensors and configs only) and loaded as a local folder; the revision recorded is
  the commit the snapshot resolved to;
- a local diffusers folder (has `model_index.json`);
- a single-file checkpoint (`.safetensors`, e.g. an A1111 model such as the published Derm-T2IM one), loaded
  with `from_single_file(config=...)` so it works offline: the configs come from `single_file_config` or, by
  default, SD1.5's configs rebuilt offline (architecture configs + the CLIP tokenizer from open_clip's
  vocabulary). A Hub id may also name such a file: `org/name/model.safetensors`.

"Model hash" (A1111's `Model hash:` = the first 10 hex digits of the sha256 of the checkpoint file): for a single
file that file's sha256, as A1111 computes it; for a diffusers folder or Hub repo, the sha256 of the UNet's
weights file `unet/diffusion_pytorch_model.safetensors` (for a sharded UNet, the sha256 of the shards' sha256s
joined in file-name order), since the UNet is what a fine-tune changes. Metadata rows keep the full sha256.

LoRA adapters (`--lora PATH_OR_ID[:SCALE]`, repeatable): a `.safetensors` file, a folder holding one (preferably
`pytorch_lora_weights.safetensors`), or a Hub id (`org/name` for its `pytorch_lora_weights.safetensors`, or
`org/name/path/file.safetensors`), in diffusers or kohya/A1111 format (diffusers converts kohya keys).
Several adapters are combined with `set_adapters` at their scales and fused into the weights for speed.
Pickle formats (.ckpt, .bin, .pt, .pth) are refused: loading them can run arbitrary code.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dermt2im_hub.config import ConfigError
from dermt2im_hub.hub.resolve import is_hub_id
from dermt2im_hub.utils.files import is_pickle_weight, is_safetensors, missing_local_path, sha256_file
from dermt2im_hub.utils.logging import get_logger
from dermt2im_hub.utils.model_hash import UNET_WEIGHTS, addnet_hash, unet_weights_sha256

log = get_logger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# A path to a .safetensors file inside a Hub repo (after `org/name/`).
_HUB_FILE_RE = re.compile(r"^(?:[\w.-]+/)*[\w.-]+\.safetensors$")


class ModelLoadError(ConfigError):
    """A base model or adapter that cannot be used; the message names it and says why."""


class AdapterMismatchError(ModelLoadError):
    """A LoRA adapter whose weights do not fit the base model."""


@dataclass
class BaseModelInfo:
    id: str  # as given: Hub id, folder or file path
    kind: str  # "hub", "folder" or "single_file"
    revision: str | None  # the Hub commit, when it came from the Hub
    sha256: str  # see the module docstring for what is hashed
    hashed_file: str  # which file that sha256 is of
    name: str  # A1111's `Model:` (file or repo name)
    local_path: str  # where it was loaded from

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]


@dataclass
class AdapterInfo:
    id: str  # as given (without the scale)
    weight_name: str  # file name inside the folder/repo
    sha256: str
    scale: float
    name: str  # short, sanitised name for set_adapters
    local_path: str
    # what A1111/civitai call it (infotext `Lora hashes`): the file a user installs (the kohya copy train_lora
    # writes beside the diffusers file, else the loaded file), named by its stem, and that file's addnet hash
    a1111_name: str = ""
    addnet_hash: str = ""

    def to_row(self) -> dict[str, Any]:
        """The adapter's entry in a metadata row (contract 2)."""
        return {"id": self.id, "weight_name": self.weight_name, "sha256": self.sha256, "scale": self.scale}


# ---------------------------------------------------------------------------------------------- sources


def _looks_like_hub_id(text: str) -> bool:
    """`org/name`, or `org/name/path/file.safetensors` for one file of the repo."""
    repo_id, filename = _split_hub_file(text)
    return is_hub_id(repo_id) and (filename is None or (bool(_HUB_FILE_RE.match(filename)) and ".." not in filename))


def _refuse_pickle(path: Path, what: str) -> None:
    if is_pickle_weight(path):
        raise ModelLoadError(f"{what} {str(path)!r} is a pickle file ({path.suffix}); loading pickles can run "
                             "arbitrary code, so only .safetensors weights are accepted (convert it first)")


def _check_weight_file(path: Path, what: str) -> None:
    """A local weight file must be `.safetensors` (exact case: diffusers would torch.load `X.SAFETENSORS`)."""
    _refuse_pickle(path, what)
    if not is_safetensors(path):
        raise ModelLoadError(f"{what} {str(path)!r} is not a .safetensors file")


def parse_adapter_spec(spec: str) -> tuple[str, float]:
    """`PATH_OR_ID[:SCALE]` -> (path or id, scale). The scale is whatever follows the last ':' when it is a
    number, so Windows paths (`C:\\loras\\x.safetensors`) and Hub ids keep their own colons."""
    text = str(spec).strip()
    if not text:
        raise ConfigError("empty --lora value")
    head, sep, tail = text.rpartition(":")
    if sep and head and not Path(text).exists():
        try:
            scale = float(tail)
        except ValueError:
            return text, 1.0
        if not math.isfinite(scale):
            raise ConfigError(f"lora: scale {tail!r} of {text!r} is not a finite number (NaN and infinity are refused)")
        return head, scale
    return text, 1.0


def _adapter_file_in_folder(folder: Path, spec: str) -> Path:
    preferred = folder / LORA_WEIGHT_NAME
    if preferred.is_file():
        return preferred
    candidates = sorted(folder.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        pickles = sorted(p.name for p in folder.iterdir() if is_pickle_weight(p))
        extra = f" (only pickle files: {', '.join(pickles)}; they are refused)" if pickles else ""
        raise ModelLoadError(f"LoRA folder {spec!r} has no .safetensors file{extra}")
    raise ModelLoadError(f"LoRA folder {spec!r} holds several .safetensors files "
                         f"({', '.join(p.name for p in candidates)}); name the file instead of the folder")


def check_sources(config) -> None:
    """Cheap checks of `base` and `lora` before anything heavy is imported: paths exist, no pickles,
    adapter specs parse. Hub ids are only checked for their shape here."""
    if config.base:
        _classify_base(config.base)
    for spec in config.lora:
        source, _scale = parse_adapter_spec(spec)
        _classify_adapter(source)


def _classify_base(base: str) -> str:
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"base folder {base!r} is not a diffusers pipeline (no model_index.json)")
        return "folder"
    if path.is_file():
        _check_weight_file(path, "base model")
        return "single_file"
    if missing_local_path(base):
        raise ModelLoadError(f"base model folder {base!r} not found (no such file or folder)")
    if _looks_like_hub_id(base):
        _refuse_pickle(Path(base), "base model")
        return "hub"
    raise ModelLoadError(f"base model {base!r} not found: it is neither an existing folder or .safetensors "
                         "file nor a Hub id (org/name)")


def _classify_adapter(source: str) -> str:
    path = Path(source).expanduser()
    if path.is_dir():
        _adapter_file_in_folder(path, source)
        return "folder"
    if path.is_file():
        _check_weight_file(path, "LoRA adapter")
        return "file"
    if missing_local_path(source):
        raise ModelLoadError(f"LoRA adapter {source!r} not found (no such file or folder)")
    if _looks_like_hub_id(source):
        _refuse_pickle(Path(source), "LoRA adapter")
        return "hub"
    raise ModelLoadError(f"LoRA adapter {source!r} not found: it is neither an existing file or folder nor a "
                         "Hub id (org/name or org/name/file.safetensors)")


# ---------------------------------------------------------------------------------------------- hashing


def folder_model_sha256(folder: Path) -> tuple[str, str]:
    """(sha256, file described) of a diffusers folder's UNet weights (utils.model_hash; see the module docstring)."""
    sha, described = unet_weights_sha256(folder)
    if sha is None:
        raise ModelLoadError(f"base folder {str(folder)!r} has no unet/{UNET_WEIGHTS} (only safetensors weights load)")
    return sha, described


# ---------------------------------------------------------------------------------------------- base


SD15_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel", "sample_size": 64, "in_channels": 4, "out_channels": 4,
    "layers_per_block": 2, "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
}
SD15_VAE_CONFIG = {
    "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "norm_num_groups": 32, "scaling_factor": 0.18215,
}
SD15_TEXT_ENCODER_CONFIG = {
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": 49408,
    "max_position_embeddings": 77, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu", "bos_token_id": 49406,
    "eos_token_id": 49407, "pad_token_id": 1,
}


def write_sd15_config_folder(folder: str | Path) -> Path:
    """SD1.5's diffusers configs (no weights) plus the CLIP tokenizer, written offline: what
    `from_single_file(config=...)` needs to load an SD1.x A1111 checkpoint without the Hub."""
    from dermt2im_hub.testing.tiny_base import SD15_SCHEDULER_CONFIG
    from dermt2im_hub.testing.tokenizer import write_clip_tokenizer_files

    folder = Path(folder)
    files = {
        "model_index.json": {
            "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
            "requires_safety_checker": False, "safety_checker": [None, None], "image_encoder": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]},
        "scheduler/scheduler_config.json": SD15_SCHEDULER_CONFIG,
        "unet/config.json": SD15_UNET_CONFIG,
        "vae/config.json": SD15_VAE_CONFIG,
        "text_encoder/config.json": SD15_TEXT_ENCODER_CONFIG,
    }
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(json.dumps(data, indent=2), encoding="utf-8")
    write_clip_tokenizer_files(folder / "tokenizer")
    return folder


def _download_snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo_id, revision=revision,
            allow_patterns=["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"],
            ignore_patterns=["*.fp16.*", "*.non_ema.*", "*.ema.*", "safety_checker/*"])
    except Exception as exc:  # offline, unknown repo, no access: say which
        raise ModelLoadError(f"could not fetch base model {repo_id!r} from the Hub: {exc}") from exc
    return Path(path)


def _download_file(repo_id: str, filename: str, revision: str | None, what: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as exc:
        raise ModelLoadError(f"could not fetch {what} {repo_id}/{filename} from the Hub: {exc}") from exc


def _split_hub_file(text: str) -> tuple[str, str | None]:
    """`org/name/dir/file.safetensors` -> ("org/name", "dir/file.safetensors"); `org/name` -> ("org/name", None)."""
    parts = text.split("/")
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


def load_base(base: str, revision: str | None = None, single_file_config: str | None = None):
    """(StableDiffusionPipeline in float32 on CPU, BaseModelInfo)."""
    from diffusers import StableDiffusionPipeline

    kind = _classify_base(base)
    hub_revision = None
    if kind == "hub":
        repo_id, filename = _split_hub_file(base)
        if filename:
            local = _download_file(repo_id, filename, revision, "base model")
            kind, hub_revision = "single_file", _revision_from_cache_path(local)
        else:
            local = _download_snapshot(repo_id, revision)
            hub_revision = local.name
    else:
        local = Path(base).expanduser()

    if kind == "single_file":
        sha, hashed = sha256_file(local), local.name
        pipe = _load_single_file(local, single_file_config)
        name = local.stem
    else:
        sha, hashed = folder_model_sha256(local)
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                str(local), use_safetensors=True, safety_checker=None, requires_safety_checker=False)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load base model {base!r} as a Stable Diffusion pipeline: {exc}") from exc
        name = base.rstrip("/").split("/")[-1] if kind == "hub" else local.resolve().name
    info = BaseModelInfo(id=base, kind="hub" if hub_revision else kind, revision=hub_revision, sha256=sha,
                         hashed_file=hashed, name=name, local_path=str(local))
    return pipe, info


def _revision_from_cache_path(path: Path) -> str | None:
    """The commit of a file inside the Hub cache (`.../snapshots/<commit>/...`)."""
    parts = path.parts
    if "snapshots" in parts[:-1]:
        return parts[parts.index("snapshots") + 1]
    return None


def _load_single_file(path: Path, config_source: str | None):
    from diffusers import StableDiffusionPipeline

    with tempfile.TemporaryDirectory(prefix="dermt2im-sd15-config-") as tmp:
        config = config_source or str(write_sd15_config_folder(tmp))
        try:
            return StableDiffusionPipeline.from_single_file(
                str(path), config=config, local_files_only=config_source is None or Path(config).is_dir(),
                safety_checker=None, requires_safety_checker=False)
        except Exception as exc:
            hint = "" if config_source else " (default configs are SD1.5's; pass single_file_config for other models)"
            raise ModelLoadError(f"could not load single-file checkpoint {str(path)!r}{hint}: {exc}") from exc


# ---------------------------------------------------------------------------------------------- adapters


def _adapter_name(index: int, source: str) -> str:
    """A safe adapter name (peft forbids dots; file names are untrusted)."""
    stem = Path(source.rstrip("/\\")).stem or "lora"
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:40] or "lora"
    return f"{cleaned}_{index}" if index else cleaned


def resolve_adapter(spec: str, index: int = 0) -> AdapterInfo:
    """Find an adapter's local safetensors file (downloading a Hub file) and hash it."""
    source, scale = parse_adapter_spec(spec)
    kind = _classify_adapter(source)
    if kind == "hub":
        repo_id, filename = _split_hub_file(source)
        local = _download_file(repo_id, filename or LORA_WEIGHT_NAME, None, "LoRA adapter")
        weight_name = filename or LORA_WEIGHT_NAME
    elif kind == "folder":
        local = _adapter_file_in_folder(Path(source).expanduser(), source)
        weight_name = local.name
    else:
        local = Path(source).expanduser()
        weight_name = local.name
    installed = _installed_file(local, repo_id if kind == "hub" else None)
    return AdapterInfo(id=source, weight_name=weight_name, sha256=sha256_file(local), scale=scale,
                       name=_adapter_name(index, source if kind != "hub" else source.split("/")[1]),
                       local_path=str(local), a1111_name=installed.stem.replace(":", "").replace(",", ""),
                       addnet_hash=addnet_hash(installed))


def _installed_file(local: Path, repo_id: str | None) -> Path:
    """The file an A1111/ComfyUI user installs for this adapter: the kohya copy a train_lora folder (or repo)
    names in its manifest (extra.card.weight_files.kohya), else the loaded file itself."""
    import json

    try:
        manifest_path = (_download_file(repo_id, "manifest.json", None, "LoRA manifest") if repo_id
                         else local.parent / "manifest.json")
        facts = json.loads(Path(manifest_path).read_text(encoding="utf-8"))["extra"]["card"]
        kohya = facts["weight_files"]["kohya"]
    except (ModelLoadError, OSError, ValueError, KeyError, TypeError):
        return local
    if not isinstance(kohya, str) or not is_safetensors(kohya) or "/" in kohya or "\\" in kohya:
        return local
    try:
        path = _download_file(repo_id, kohya, None, "kohya LoRA file") if repo_id else local.parent / kohya
    except ModelLoadError:
        return local
    return path if Path(path).is_file() else local


def load_adapters(pipe, specs: list[str], base: BaseModelInfo) -> list[AdapterInfo]:
    """Load every adapter into `pipe`, set their scales and fuse them into the weights."""
    from safetensors.torch import load_file

    adapters = [resolve_adapter(spec, i) for i, spec in enumerate(specs)]
    for adapter in adapters:
        try:
            state_dict = load_file(adapter.local_path)
            pipe.load_lora_weights(state_dict, adapter_name=adapter.name)
        except Exception as exc:
            raise AdapterMismatchError(f"LoRA adapter {adapter.id!r} does not fit base model {base.id!r}: "
                                       f"{_first_line(exc)}") from exc
        loaded = {name for names in pipe.get_list_adapters().values() for name in names}
        if adapter.name not in loaded:
            raise AdapterMismatchError(f"LoRA adapter {adapter.id!r} does not fit base model {base.id!r}: none of "
                                       "its weights match the base's UNet or text encoder")
    if adapters:
        pipe.set_adapters([a.name for a in adapters], adapter_weights=[a.scale for a in adapters])
        # Fusing folds the scaled LoRA products into the base weights: no per-step LoRA matmuls.
        pipe.fuse_lora(adapter_names=[a.name for a in adapters], lora_scale=1.0)
        pipe.unload_lora_weights()
    return adapters


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    detail = " ".join(lines[:3])
    return f"{type(exc).__name__}: {detail[:600]}"


def adapters_summary(adapters: list[AdapterInfo]) -> list[dict[str, Any]]:
    return [asdict(a) for a in adapters]
