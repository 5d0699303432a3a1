import sys

from encore.cli import main

sys.exit(main())
