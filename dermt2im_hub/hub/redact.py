"""Local paths out of what is published: a machine's directory layout stays on that machine.

Stage outputs keep complete local provenance on disk (manifests, resolved configs, reports), because later
stages and resume checks read it. What goes to the Hub is a redacted view:

    redact_value({"images": "/home/alice/clinic-x/ham", "base": "org/sd15"})
    # -> {"images": "<local>/ham", "base": "org/sd15"}
    redact_file("manifest.json", data)      # redacted bytes, or None when nothing had to change

An absolute local path is a POSIX path (`/...`), a home path (`~/...`, `~user/...`), a Windows drive path
(`C:\\...`, `C:/...`), a UNC path (`\\\\server\\share`) or a `file://` URI. Such a string value becomes
`<local>/LASTPART`; a path inside a longer string (an error message, a note) is replaced the same way.
Hub ids (`org/name`), relative paths and other URLs are left alone. Cards use `cut_local_paths`, which
keeps only the last part (the card documentation promises that).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

LOCAL = "<local>"
# Text files redacted before upload: structured ones value by value, Markdown (cards, model-index.md, a card
# rendered by an older version) as text; any other file goes as it is.
REDACTED_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".md")

_WHOLE_PATH = re.compile(r"""^(?:file://|~(?:[\w.-]*/|$)|/|[A-Za-z]:[\\/]|\\\\)""")
_TOKEN = r"""[^\s'"`<>|,;()\[\]{}]"""
_ROOT = r"(?:~[\w.-]*/|[A-Za-z]:[\\/]|\\\\|/(?![A-Za-z][\w-]*>))"  # `/`, but not the `/` of `</b>`
# A path may run on over spaces while each further word still holds a separator (`/clinic/Jane Doe/a.png`);
# `and/or` after a path is swallowed too, which errs on the side of hiding. Possessive quantifiers: the text
# is untrusted (prompts from PNG files), so matching must stay linear, with no backtracking.
_PATH_BODY = _TOKEN + r"*+(?: (?=" + _TOKEN + r"*[\\/])" + _TOKEN + r"*+)*+"
# A URL is matched first so that the paths inside it are kept; a quoted path is taken whole, spaces and all; a
# bare path must start at a boundary (not after a letter, digit, '.', '-', '+', '~', '*', '>' or a slash, so
# `org/name`, `and/or`, `1/2`, base64, globs like `*/logs/*` and an already redacted `<local>/x` stay). A
# match without a letter or digit is not a path (tokenizer entries like `//` or `/@`): _path_matches drops it.
_EMBEDDED = re.compile(
    r"(?P<file>file://" + _TOKEN + r"++)"
    r"|(?P<url>\b[A-Za-z][A-Za-z0-9+.-]*+://" + _TOKEN + r"*+)"
    r"|(?<=['\"])(?P<quoted>" + _ROOT + r"[^'\"\n]*+)(?=['\"])"
    r"|(?<![\w.~+*/\\>-])(?P<path>" + _ROOT + _PATH_BODY + r")")
_WORD = re.compile(r"\w")
# Files whose keys and values are vocabulary, not provenance: never rewritten.
_NOT_REDACTED_NAMES = frozenset({"vocab.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                 "added_tokens.json", "merges.txt"})


def is_local_path(value: Any) -> bool:
    """Whether a whole string value starts as an absolute local filesystem path."""
    return isinstance(value, str) and "\n" not in value and bool(_WHOLE_PATH.match(value.strip()))


def last_part(path: str) -> str:
    """The last non-empty part of a POSIX or Windows path ('' for a root such as `/`, `~` or `C:\\`)."""
    text = path.strip()
    if text.startswith("file://"):
        text = text[len("file://"):]
    parts = [p for p in re.split(r"[\\/]+", text) if p]
    if not parts or re.fullmatch(r"~[\w.-]*|[A-Za-z]:", parts[-1]):
        return ""
    return parts[-1]


def local_marker(path: str) -> str:
    """`<local>/LASTPART` (`<local>` for a root): what a published file shows instead of a local path."""
    part = last_part(path)
    return f"{LOCAL}/{part}" if part else LOCAL


def _path_matches(text: str) -> list[re.Match]:
    return [m for m in _EMBEDDED.finditer(text) if m.group("url") is None and _WORD.search(m.group(0))]


def redact_text(text: str, replace: Callable[[str], str] = local_marker) -> str:
    """`text` with every absolute local path in it replaced.

    A string that is one path (spaces allowed, e.g. `/home/a/My Data/x.png`) becomes `replace(text)`;
    paths inside other text (`copy of /a/x.png and /a/y.png`) are replaced one by one, up to whitespace."""
    matches = _path_matches(text)
    if not matches:
        return text
    if len(matches) == 1 and is_local_path(text):
        return replace(text)
    pieces, end = [], 0
    for match in matches:
        pieces += [text[end:match.start()], replace(match.group(0))]
        end = match.end()
    return "".join(pieces) + text[end:]


def redact_value(value: Any, replace: Callable[[str], str] = local_marker) -> Any:
    """A copy of a JSON/YAML value with local paths replaced in every string value and string key."""
    return _redact(value, replace, [])


def _redact(value: Any, replace: Callable[[str], str], changed: list) -> Any:
    if isinstance(value, str):
        new = redact_text(value, replace)
        if new != value:
            changed.append(value)
        return new
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            new_key = _redact(key, replace, changed) if isinstance(key, str) else key
            if new_key in out:  # two local paths with the same last part: keep both entries
                n = 2
                while f"{new_key} ({n})" in out:
                    n += 1
                new_key = f"{new_key} ({n})"
            out[new_key] = _redact(item, replace, changed)
        return out
    if isinstance(value, (list, tuple)):
        return [_redact(v, replace, changed) for v in value]
    return value


def cut_local_paths(value: Any) -> Any:
    """Like `redact_value`, but a local path becomes its last part only (what cards print)."""
    return redact_value(value, lambda path: last_part(path) or LOCAL)


def public_name(value: str) -> str:
    """A Hub id as is; a local path (absolute, or relative and existing here) cut to its last part."""
    from dermt2im_hub.hub.resolve import is_remote_hub_id

    text = str(value)
    return text if is_remote_hub_id(text) else (last_part(text) or text)


def needs_redaction(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(REDACTED_SUFFIXES) and lower.rsplit("/", 1)[-1] not in _NOT_REDACTED_NAMES


def redact_file(name: str, data: bytes) -> bytes | None:
    """The published bytes of file `name` (repo-relative) when they differ from `data`, else None.

    JSON, JSONL and YAML files are parsed and dumped again only when a value had to change (other files and
    unchanged ones go as they are); a file that does not parse has the paths in its raw text replaced."""
    if not needs_redaction(name):
        return None
    text = data.decode("utf-8", errors="surrogateescape")
    lower = name.lower()
    try:
        if lower.endswith(".md"):
            new = redact_text(text)
        elif lower.endswith(".jsonl"):
            new = _redact_jsonl(text)
        elif lower.endswith(".json"):
            new = _redact_json(text)
        else:
            new = _redact_yaml(text)
    except Exception as error:  # any parse error: fall back to the raw text
        logger.warning("%s does not parse (%s); replacing local paths in its raw text", name, type(error).__name__)
        new = redact_text(text)
    if new is None or new == text:
        return None
    return new.encode("utf-8", errors="surrogateescape")


def _redact_json(text: str) -> str | None:
    changed: list = []
    redacted = _redact(json.loads(text), local_marker, changed)
    return json.dumps(redacted, indent=2) + "\n" if changed else None


def _redact_jsonl(text: str) -> str | None:
    lines = text.splitlines(keepends=True)
    changed = False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        row_changed: list = []
        redacted = _redact(json.loads(line), local_marker, row_changed)
        if row_changed:
            ending = line[len(line.rstrip("\r\n")):]
            lines[i] = json.dumps(redacted) + ending
            changed = True
    return "".join(lines) if changed else None


def _redact_yaml(text: str) -> str | None:
    import yaml

    changed: list = []
    redacted = [_redact(d, local_marker, changed) for d in yaml.safe_load_all(text)]
    if not changed:
        return None
    if len(redacted) == 1:
        return yaml.safe_dump(redacted[0], sort_keys=False, allow_unicode=True)
    return yaml.safe_dump_all(redacted, sort_keys=False, allow_unicode=True)
