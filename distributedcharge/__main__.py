import sys

from distributedcharge.cli import main

sys.exit(main())
