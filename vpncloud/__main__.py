"""``python -m vpncloud``: the same as the ``vpncloud`` script."""

import sys

from vpncloud.cli import main

sys.exit(main())
