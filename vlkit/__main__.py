import sys

from vlkit.apps.cli import main

sys.exit(main())
