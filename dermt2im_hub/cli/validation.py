"""`dermt2im validate`: label fidelity, zero-shot SAM segmentation and detection of synthetic images."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 55

_DESCRIPTION = """\
Check synthetic images the way the Derm-T2IM paper did, and report beside its numbers:
  - label fidelity: a classifier trained on real images only scores every image against its prompt's label
    (accuracy per class and sampler with Wilson intervals, confusion matrix, least-faithful contact sheet);
    the paper: 72 % on 200 images with a YOLOv8 trained on real ISIC;
  - segmentation (--segmentation.enabled): Segment Anything (transformers SamModel, e.g. facebook/sam-vit-base)
    prompted with a box from a lesion prior; Dice/IoU on real images with masks (--segmentation.calibration-images);
  - detection (--detection.enabled): a transformers detector (e.g. facebook/detr-resnet-50) fine-tuned on real
    images, with detection rate and detected-class accuracy.

INPUT is a generated folder, any folder of AUTOMATIC1111 PNGs (labels from the prompt, else a benign/malignant
folder) or a built dataset. It is only read: everything goes to --output (metadata.jsonl with per-image
fidelity_*/seg_*/det_* columns, report.json, summary.md, least_faithful.png, manifest.json, README.md).

Examples:
  dermt2im validate ../shared/data/dermt2im-sample --output outputs/validate-sample \\
      --fidelity.real ../shared/data/isic-binary-train \\
      --fidelity.reference-model local-dir:../shared/models/mobilenetv2_100.tf_in1k
  dermt2im validate outputs/generated --classifier outputs/benchmark/models/mobilenetv2_100-real-seed0 \\
      --output outputs/validate
  dermt2im validate outputs/dataset --config configs/paper.yaml --output outputs/validate
"""


def register(subparsers) -> None:
    from dermt2im_hub.config import add_common_config_flags, add_config_arguments
    from dermt2im_hub.validation.config import ValidationConfig

    p = subparsers.add_parser("validate", help="label fidelity, SAM segmentation and detection of synthetic images",
                              description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input_dir", type=Path, metavar="INPUT",
                   help="generated folder, folder of A1111 PNGs, or built dataset (read only)")
    p.add_argument("--output", type=Path, required=True, metavar="DIR", help="output folder (outside INPUT)")
    p.add_argument("--classifier", default=None, metavar="MODEL",
                   help="real-only 2-class timm classifier (folder, local-dir:, hf-hub: or timm name); same as "
                        "--fidelity.classifier")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_common_config_flags(p)
    add_config_arguments(p, ValidationConfig)
    p.set_defaults(func=_validate)


def _validate(args: argparse.Namespace) -> int:
    from dermt2im_hub.cli import UserError
    from dermt2im_hub.cli.hub import write_stage_card
    from dermt2im_hub.config import config_from_args
    from dermt2im_hub.quality.images import FolderError
    from dermt2im_hub.validation.config import SECTION, ValidationConfig
    from dermt2im_hub.validation.run import run_validation

    config = config_from_args(ValidationConfig, args, section=SECTION)
    try:
        result = run_validation(args.input_dir, config, args.output, classifier=args.classifier,
                                progress=not args.no_progress)
    except FolderError as error:
        raise UserError(str(error)) from error
    write_stage_card(result.output_dir)
    print((result.output_dir / "summary.md").read_text(encoding="utf-8"))
    print(f"report: {result.output_dir / 'report.json'} (card: {result.output_dir / 'README.md'})")
    return 0
