import sys

from dermt2im_hub.cli import main

sys.exit(main())
