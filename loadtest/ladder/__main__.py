import sys

from .climb import main

sys.exit(main())
