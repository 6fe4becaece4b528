import sys

from catlip.cli import main

sys.exit(main())
