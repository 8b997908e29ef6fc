"""The worker's processes: one django-q2 cluster per role (:mod:`.cluster`), and the
supervisor of both (:mod:`.supervisor`). See docs/operations.md#the-worker."""
