"""`python -m controller` is `swapctl`."""

import sys

from controller.cli.main import main

sys.exit(main())
