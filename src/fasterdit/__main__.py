import sys

from fasterdit.cli import main

sys.exit(main())
