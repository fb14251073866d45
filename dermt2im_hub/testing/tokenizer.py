"""The real 49,408-token CLIP BPE tokenizer, rebuilt offline.

Stable Diffusion 1.x uses OpenAI's CLIP tokenizer. Its vocabulary is the byte-level BPE merge list that
ships inside the open_clip_torch wheel (`open_clip/bpe_simple_vocab_16e6.txt.gz`). We read that file
from the installed package's folder (importing open_clip itself may try an nltk download) and write the
`vocab.json` + `merges.txt` pair that transformers' CLIPTokenizer reads:

- the merge list is the file's lines 1 .. 48894 (line 0 is a version header);
- the vocabulary is the 256 byte symbols, the same with the end-of-word marker `</w>`, one token per merge,
  then `<|startoftext|>` (49406) and `<|endoftext|>` (49407): 256 + 256 + 48894 + 2 = 49,408 tokens.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 256 - 256 - 2
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def bpe_vocab_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip_torch is not installed; it carries the CLIP BPE vocabulary "
                           "(pip install open_clip_torch)")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise RuntimeError(f"CLIP BPE vocabulary not found at {path}")
    return path


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable-character table, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = {}
    extra = 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    # CLIP orders the base vocabulary as printable bytes first, then the remapped ones
    ordered = [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable]
    return ordered


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(bpe_vocab_path(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:1 + NUM_MERGES]
    base = _bytes_to_unicode()
    tokens = base + [t + "</w>" for t in base] + ["".join(m.split()) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    if len(tokens) != VOCAB_SIZE:
        raise RuntimeError(f"rebuilt CLIP vocabulary has {len(tokens)} tokens, expected {VOCAB_SIZE}")
    return {token: i for i, token in enumerate(tokens)}, merges


def write_clip_tokenizer_files(folder: str | Path, model_max_length: int = 77) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs of SD1.5's tokenizer into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN,
    }, indent=2), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "do_lower_case": True,
        "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN,
        "errors": "replace", "add_prefix_space": False,
    }, indent=2), encoding="utf-8")
    return folder


def load_clip_tokenizer(folder: str | Path | None = None):
    """A transformers CLIPTokenizer with the real vocabulary (written to a temp folder if none is given)."""
    import tempfile

    from transformers import CLIPTokenizer

    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="clip-tokenizer-"))
        write_clip_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(str(folder))
