"""``python -m metis_shm``: the ``metis`` command line (``metis_shm.cli``)."""

import sys

from metis_shm.cli import main

if __name__ == "__main__":
    sys.exit(main())
