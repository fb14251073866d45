"""`accelerate launch -m dermt2im_hub.generation ARGS` runs `dermt2im generate ARGS` on every rank."""

import sys

from dermt2im_hub.cli import main

sys.exit(main(["generate", *sys.argv[1:]]))
