"""``python -m vpncloud.lab up|down|status FILE``."""

import sys

from vpncloud.lab.cli import main

sys.exit(main())
