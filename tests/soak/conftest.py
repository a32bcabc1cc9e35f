"""The soak run is `make soak`'s alone: ten minutes do not belong in `make test`."""

from __future__ import annotations

import os

if not os.environ.get("PACS_SOAK"):
    collect_ignore_glob = ["test_*.py"]
