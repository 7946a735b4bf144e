"""The far tier: Metis as the near cache in front of Redis.

A near cache serves Redis keys from the shared segment and is kept coherent
by Redis's server-assisted invalidation (``CLIENT TRACKING``): metisd runs a
``Tracker`` (``tracker.py``) that holds the tracking connection(s), applies
every invalidation to the segment and vouches, ping after ping, for how long
the near tier may be served. ``resp.py`` is the small RESP2/RESP3 client
connection it speaks with.
"""
