"""The `dermt2im` command line.

Each module in this package registers its subcommands through `register(subparsers)`; `ORDER` sorts
them in `dermt2im --help`. Modules import heavy libraries inside their handlers so `--help` stays fast.
Handlers return an exit code (0 on success).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from dermt2im_hub import __version__


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


def _command_modules():
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            modules.append(module)
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


def _normalize_argv(argv: list[str]) -> list[str]:
    """Let a subcommand rewrite its own arguments before parsing (a module's `ARGV_NORMALIZERS`, e.g.
    diffusers' `--train_data_dir` spellings for `train-lora`)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # options before the command
        i += 2 if argv[i] == "--log-level" else 1
    if i >= len(argv):
        return argv
    for module in _command_modules():
        normalize = getattr(module, "ARGV_NORMALIZERS", {}).get(argv[i])
        if normalize:
            return argv[:i + 1] + normalize(argv[i + 1:])
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dermt2im",
        description="Derm-T2IM on the Hugging Face stack: preprocess real dermoscopy, train DreamBooth-LoRA, "
                    "generate a synthetic benign/malignant dataset, check it, build a `datasets` dataset, "
                    "benchmark classifiers and publish everything to the Hub.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for module in _command_modules():
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dermt2im_hub.config import ConfigError
    from dermt2im_hub.utils.logging import configure_logging

    parser = build_parser()
    try:
        argv = _normalize_argv(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as exc:
        print(f"dermt2im: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(args.log_level)
    try:
        code = args.func(args)
    except (UserError, ConfigError, FileNotFoundError) as exc:
        print(f"dermt2im {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        # a path the user gave is the wrong kind of thing (a file where a folder goes) or not writable
        hint = ("no permission: choose a folder you can write to" if isinstance(exc, PermissionError)
                else "a file is where a folder is expected, or the reverse: check the paths given")
        print(f"dermt2im {args.command}: error: {exc.strerror}: {exc.filename} ({hint})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dermt2im {args.command}: interrupted; finished work is kept and a re-run resumes.",
              file=sys.stderr)
        return 130
    except Exception as exc:
        from dermt2im_hub.hub.online import hub_error_line

        line = hub_error_line(exc)  # offline, no connection, or an HTTP error from a Hub request
        if line is None:
            raise
        print(f"dermt2im {args.command}: error: {line}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
