"""`dermt2im build-dataset`: image folders -> a Hub-ready `datasets` folder (parquet + card), optionally pushed."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 50


def register(subparsers) -> None:
    from dermt2im_hub.config import add_config_arguments
    from dermt2im_hub.dataset.config import CONFIG_NAMES, DatasetConfig

    p = subparsers.add_parser(
        "build-dataset", help="build the `datasets` dataset (parquet + card) from image folders",
        description="Read INPUT folders with the DermT2IM builder and write DIR/data/CONFIG/[SAMPLER/]{split}-"
                    "NNNNN-of-NNNNN.parquet (image bytes without metadata: pixels untouched, only the A1111 "
                    "`parameters` text kept; synthetic and a1111 shards split by sampler), DIR/README.md (dataset "
                    "card with a configs block: the config, and CONFIG-SAMPLER per sampler), "
                    "DIR/data/CONFIG/sample_grid.png and DIR/manifest.json, so that load_dataset(DIR) - or "
                    "load_dataset('ORG/NAME') after --push-to-hub - gives ClassLabel and Image features. Builds of "
                    "other configs pushed to the same repo are kept (their files under data/OTHER/, card merged). "
                    "Duplicates (same bytes) are kept once, corrupt files skipped, both reported. Rows flagged "
                    "by the memorization audit stop the build and the push unless --allow-memorized.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="input folder(s), read in this order")
    p.add_argument("--config", dest="cfg__config_name", choices=CONFIG_NAMES, default=None,
                   help="what the inputs are: synthetic (generation output: metadata.jsonl + PNGs), a1111 (any "
                        "folder of AUTOMATIC1111 PNGs), real (preprocessed folder with a split column) "
                        "(default: synthetic)")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="DIR", help="folder to write")
    p.add_argument("--config-file", dest="config", type=Path, default=None, metavar="YAML",
                   help="YAML config: flat, or a recipe whose `dataset:` section is used (configs/paper.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key; repeatable")
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress bar (--no-progress as in the other commands)")
    add_config_arguments(p, DatasetConfig, skip=("config_name",))
    from dermt2im_hub.utils.output_folder import add_overwrite_flag

    add_overwrite_flag(p)
    p.set_defaults(func=_build_dataset)


def _build_dataset(args: argparse.Namespace) -> int:
    from dermt2im_hub.cli import UserError
    from dermt2im_hub.config import config_from_args
    from dermt2im_hub.dataset.config import DatasetConfig
    from dermt2im_hub.dataset.export import build_dataset
    from dermt2im_hub.dataset.sources import MemorizationError
    from dermt2im_hub.hub import PushError
    from dermt2im_hub.hub.online import require_online
    from dermt2im_hub.utils.output_folder import claimed_output_folder

    config = config_from_args(DatasetConfig, args, section="dataset")
    if config.push_to_hub:
        require_online("--push-to-hub")  # before building, not after
    try:
        with claimed_output_folder(args.output, "build_dataset", {"inputs": list(args.inputs)},
                                   overwrite=args.overwrite):
            result = build_dataset(args.inputs, args.output, config, progress=not args.quiet)
    except (MemorizationError, PushError) as error:
        raise UserError(str(error)) from error
    except ValueError as error:  # bad inputs: no usable image, output inside an input, ...
        raise UserError(str(error)) from error
    splits = ", ".join(f"{name} {count}" for name, count in result.splits.items())
    print(f"{config.config_name}: {result.num_rows} rows ({splits}); {'; '.join(result.messages)}")
    print(f"dataset written to {result.output_dir} ({len(result.shards)} parquet shard(s), card {result.card})")
    if result.pushed is not None:
        visibility = "public" if config.public else "private"
        print(f"pushed to dataset repo {config.push_to_hub} ({visibility}): "
              f"{getattr(result.pushed, 'commit_url', result.pushed)}")
    return 0
