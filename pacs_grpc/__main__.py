"""`python -m pacs_grpc`: the `pacs-grpc` command (pacs_grpc.cli), same arguments."""

import sys

from pacs_grpc.cli import main

sys.exit(main())
