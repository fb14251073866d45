"""Data-stage command: `dermt2im preprocess` (real dermoscopy or an image folder -> a preprocessed image folder)."""

from __future__ import annotations

import argparse

from dermt2im_hub.config import add_common_config_flags, add_config_arguments, config_from_args
from dermt2im_hub.data.config import DataConfig
from dermt2im_hub.utils.output_folder import add_overwrite_flag, claimed_output_folder

ORDER = 20

_DESCRIPTION = """\
Turn real dermoscopy into the image folder every later stage reads: labels from the source's metadata
(benign/malignant as dermt2im_hub.labels maps diagnoses), lesion- and patient-disjoint train/validation/test
splits with the test split written to test_exclusion.json, DullRazor-style hair removal, resize + centre-crop
to --size, PNGs in OUT/{benign,malignant}/, metadata.jsonl, report.json, manifest.json and README.md. Bad
inputs are skipped or converted and listed in report.json; a re-run only does what is missing.

Exit status: 0 done; 1 no usable image was found; 2 bad input or config.
"""

_EPILOG = """examples:
  dermt2im preprocess --source ham10000 --images HAM10000_images --metadata HAM10000_metadata.csv --output data/ham
  dermt2im preprocess --source isic --images ISIC_2020_Train --metadata ISIC_2020_Training_GroundTruth.csv \\
      ISIC_2020_Training_Duplicates.csv --output data/isic2020 --limit-per-class 1400
  dermt2im preprocess --source isic --images isic-sample/images --metadata isic-sample/images --output data/isic
  dermt2im preprocess --source folder --images outputs/phantoms --output data/phantoms --size 64
  dermt2im preprocess --config configs/paper.yaml --images ... --metadata ... --output ...   (reads `data:`)
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "preprocess", help="real ISIC / HAM10000 images (or a class-folder) -> preprocessed image folder",
        description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_config_flags(p)
    # --metadata takes several files (ground truth + metadata + duplicates list), so it is declared here;
    # its dest is the one config_from_args reads for the `metadata` field.
    p.add_argument("--metadata", dest="cfg__metadata", nargs="+", default=None, metavar="FILE_OR_DIR",
                   help="ham10000: HAM10000_metadata.csv; isic: challenge CSV(s) of any format (ground truth, "
                        "2017/2019 metadata, 2020 duplicates list) or the folder of ISIC JSON records; "
                        "folder: not needed")
    add_config_arguments(p, DataConfig, skip=("metadata",))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite_flag(p)
    p.set_defaults(func=_preprocess)


def _preprocess(args: argparse.Namespace) -> int:
    from dermt2im_hub.cli.hub import write_stage_card
    from dermt2im_hub.data.preprocess import REPORT_NAME, run_preprocess

    config = config_from_args(DataConfig, args, section="data")
    if not config.output:
        result = run_preprocess(config, progress=not args.no_progress)  # says what is missing
    else:
        # another source's earlier output would lose its images as "stale": only with --overwrite
        with claimed_output_folder(config.output, "preprocess", {"images": config.images},
                                   overwrite=args.overwrite, reads={"metadata": list(config.metadata)}):
            result = run_preprocess(config, progress=not args.no_progress)
    rate = f", {result.processed / result.elapsed_seconds:.1f} img/s" if result.processed else ""
    print(f"preprocess: {len(result.records)} image(s) in {result.output} (processed {result.processed}, "
          f"reused {result.reused}, {result.elapsed_seconds:.1f} s{rate})")
    for line in result.report.summary_lines():
        print(line)
    print(f"  details: {result.output / REPORT_NAME}")
    if not result.usable:
        print(f"preprocess: error: no usable image was found: {_why_nothing(config, result.report)}", flush=True)
        return 1
    print(f"  card: {write_stage_card(result.output)}")
    return 0


def _why_nothing(config: DataConfig, report) -> str:
    """What to check when a run kept no image, from the reasons its images were skipped."""
    skipped = report.skipped
    if skipped.get("not_in_class_folder"):
        return (f"--source folder reads {config.images}/benign/ and {config.images}/malignant/ (images elsewhere "
                "are skipped); for HAM10000 or ISIC give --source ham10000 or isic with --metadata")
    if skipped.get("missing_image") and skipped.get("no_metadata"):
        return ("no image file matched a metadata row: check that --images and --metadata come from the same "
                "release (see the report)")
    if skipped.get("missing_image"):
        return f"no metadata row has its image under {config.images} (see the report)"
    if not skipped:
        return f"no image files found under {config.images}"
    return "see the report"
