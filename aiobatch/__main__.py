import sys

from aiobatch.cli import main

sys.exit(main())
