"""What the notifications app announces (``monitoring`` connects its receivers)."""

from __future__ import annotations

import django.dispatch

# The outcome of one Bot API call is recorded (``outcome``: the attempt's outcome).
send_recorded = django.dispatch.Signal()
# Sent when an owner's message about a finished training is sent: ``notification``,
# ``finished_at`` (fal's end as the finish knew it) and ``sent_at`` (the owner-told figure).
owner_told = django.dispatch.Signal()
