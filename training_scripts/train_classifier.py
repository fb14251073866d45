#!/usr/bin/env python
"""Classifier benchmark: `accelerate launch training_scripts/train_classifier.py --config CONFIG.yaml ...`.

A thin entry point: the stage lives in `dermt2im_hub.evaluation` (see docs/evaluation.md and `--help`).
"""

import sys

from dermt2im_hub.evaluation.launch import main

if __name__ == "__main__":
    sys.exit(main())
