#!/usr/bin/env python
"""DreamBooth-LoRA on Stable Diffusion: `accelerate launch training_scripts/train_lora.py --config CONFIG.yaml ...`.

A thin entry point: the stage lives in `dermt2im_hub.training` (see docs/training.md and `--help`).
"""

import sys

from dermt2im_hub.training.launch import main

if __name__ == "__main__":
    sys.exit(main())
