import sys

from capi_c3os.cli import main

sys.exit(main())
