"""`python -m controller` is `swapctl`."""

import sys

from controller.cli import main

sys.exit(main())
