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

_WHOLE_PATH = re.compile(r"""^(?:file://|~(?:[\w.-]*/|$)|/|[A-Za-z]:[\\/]|\\\\)""", re.IGNORECASE)
_TOKEN = r"""[^\s'"`<>|,;()\[\]{}]"""
# URLs are kept, except file URIs (any scheme ending in `file`). The boundary is a lookbehind, not \b: a
# scheme cannot start inside a run like `a.a.a.`, so matching stays linear on untrusted text.
_URL = re.compile(r"(?<![A-Za-z0-9+.-])(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*+)://" + _TOKEN + r"*+")
# Where an absolute path may start: `/`, `~/` or `~user/`, `C:\` or `C:/`, `\\server`. Not after a letter,
# digit or one of . ~ + * / \ > ) ] % # $ - (so `org/name`, `and/or`, `1/2`, `(a+b)/2`, `50%/50%`, `#/defs`,
# base64, globs like `*/logs/*` and an already redacted `<local>/x` stay), not at a Markdown link target
# `](/...)` (a Hub-relative link) and not at the `/` of an HTML end tag such as `</b>`.
_ROOT = re.compile(r"(?<![\w.~+*/\\>)\]%#$-])(?<!\]\()"
                   r"(?:(?P<home>~/|~[A-Za-z][\w.-]*+/?)|[A-Za-z]:[\\/]|\\\\(?=\w)|/(?![A-Za-z][\w-]*>))")
# A path runs on, over spaces and commas (`/clinic/Smith, John/a.png`), to its last separator before the next
# path, the end of the line, a table or code delimiter, or its closing quote; then through its last part. A
# `/` or drive path needs two parts (a lone `/imagine` or `/2` is not one); a home path always counts.
_HARD_STOP = r"\n\r\t|`<>"
_TAIL = re.compile(_TOKEN + r"*+")
_WORD = re.compile(r"\w")
# Files whose keys and values are vocabulary, not provenance: never rewritten.
_NOT_REDACTED_NAMES = frozenset({"vocab.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                 "added_tokens.json", "merges.txt"})


def is_local_path(value: Any) -> bool:
    """Whether a whole string value starts as an absolute local filesystem path."""
    return isinstance(value, str) and "\n" not in value and bool(_WHOLE_PATH.match(value.strip()))


def last_part(path: str) -> str:
    """The last non-empty part of a POSIX or Windows path ('' for a root such as `/`, `~` or `C:\\`)."""
    text = re.sub(r"^[A-Za-z0-9+.-]*file://", "", path.strip(), flags=re.IGNORECASE)
    parts = [p for p in re.split(r"[\\/]+", text) if p]
    if not parts or re.fullmatch(r"~[\w.-]*|[A-Za-z]:", parts[-1]):
        return ""
    return parts[-1]


def local_marker(path: str) -> str:
    """`<local>/LASTPART` (`<local>` for a root): what a published file shows instead of a local path."""
    part = last_part(path)
    return f"{LOCAL}/{part}" if part else LOCAL


_STOPS = re.compile(f"[{_HARD_STOP}]")
_STOPS_OR_QUOTE = {quote: re.compile(f"[{_HARD_STOP}{quote}]") for quote in "'\""}


def _path_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every absolute local path in `text`, in order; one linear pass."""
    spans: list[tuple[int, int]] = []
    urls = [(url.start(), url.end(), url.group("scheme").lower().endswith("file")) for url in _URL.finditer(text)]
    spans += [(a, b) for a, b, is_file in urls if is_file]
    url_index, pos = 0, 0
    for root in _ROOT.finditer(text):
        start = root.start()
        while url_index < len(urls) and urls[url_index][1] <= start:
            url_index += 1
        if start < pos or (url_index < len(urls) and urls[url_index][0] <= start):
            continue  # inside a URL (kept) or a file URI (already a span)
        following = _ROOT.search(text, root.end())
        window_end = following.start() if following else len(text)
        opener = text[start - 1] if start else ""
        stop = _STOPS_OR_QUOTE.get(opener, _STOPS).search(text, start, window_end)
        limit = stop.start() if stop else window_end
        body = text[start:limit]
        last_separator = max(body.rfind("/"), body.rfind("\\"))
        root_length = root.end() - start
        home = root.group("home") is not None
        if last_separator < root_length - 1 or (last_separator == root_length - 1 and not home):
            if not home:
                continue  # one part only: `/imagine`, `/2`
            last_separator = root_length - 1
        tail = _TAIL.match(text, start + last_separator + 1)
        end = max(min(tail.end(), limit), root.end())
        if not home and _WORD.search(text, start + root_length, end) is None:
            continue  # `//`, `/@`: tokenizer entries, not paths
        spans.append((start, end))
        pos = end
    return sorted(spans)


def redact_text(text: str, replace: Callable[[str], str] = local_marker) -> str:
    """`text` with every absolute local path in it replaced by `replace(path)`.

    A string that is one path (spaces allowed, e.g. `/home/a/My Data/x.png`) becomes `replace(text)`; paths
    inside other text (`copy of /a/x.png and /a/y.png`) are replaced one by one (see _ROOT for the rules)."""
    spans = _path_spans(text)
    if not spans:
        return text
    if len(spans) == 1 and is_local_path(text):
        return replace(text)
    pieces, end = [], 0
    for start, stop in spans:
        pieces += [text[end:start], replace(text[start:stop])]
        end = stop
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
        next_suffix: dict[Any, int] = {}
        for key, item in value.items():
            new_key = _redact(key, replace, changed) if isinstance(key, str) else key
            if new_key in out:  # two local paths with the same last part: keep both entries
                n = next_suffix.get(new_key, 2)
                while f"{new_key} ({n})" in out:
                    n += 1
                next_suffix[new_key] = n + 1
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
        new = _redact_raw(name, text)
    if new is None and not lower.endswith(".md"):  # no value changed, yet a comment may hold a path (YAML `#`)
        raw = _redact_raw(name, text)
        new = raw if raw != text else None
    if new is None or new == text:
        return None
    return new.encode("utf-8", errors="surrogateescape")


def _redact_raw(name: str, text: str) -> str:
    """The paths in a file's raw text replaced; JSON's `\\/` escape (the same character as `/`) first."""
    if name.lower().endswith((".json", ".jsonl")) and "\\/" in text:
        text = text.replace("\\/", "/")
    return redact_text(text)


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
