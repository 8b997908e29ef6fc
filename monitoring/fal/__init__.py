"""Everything fal: the queue gateway (``client``), what fal hands us (``payloads``), its
signed webhooks (``webhooks``, ``signing_keys``, ``views``).

Nothing outside this package knows fal's wire format: the rest of the monitor sees
classified errors, status reports and validated URLs.
"""
