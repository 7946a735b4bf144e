"""``python -m metis_shm.demo``: metisd and worker processes sharing its cache (metisd.py)."""

import sys

from metis_shm.demo.metisd import main

if __name__ == "__main__":
    sys.exit(main())
