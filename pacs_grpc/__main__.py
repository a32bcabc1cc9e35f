import sys

from pacs_grpc.cli import main

sys.exit(main())
