import sys

from pacs_devstack.cli import main

sys.exit(main())
