import sys

from congener.cli import main

sys.exit(main())
