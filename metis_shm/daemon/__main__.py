"""``python -m metis_shm.daemon``: the ``metisd`` command line (main.py)."""

import sys

from metis_shm.daemon.main import main

if __name__ == "__main__":
    sys.exit(main())
