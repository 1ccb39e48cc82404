"""``python -m edge_monitor``: the ``edge-monitor`` command."""

import sys

from edge_monitor.commands import main

sys.exit(main())
