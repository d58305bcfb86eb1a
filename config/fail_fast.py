"""Skipping, for a few seconds, a server that just failed to answer (per process).

A Redis that hangs cost every upload each of its commands' timeouts in turn: the rate
limit's count (1 s), the wake-up record's add and delete (1 s each) and the broker's
publish (5 s), about 8 s an upload, and a 20-instance STOW request ran past gunicorn's
timeout after storing most of its instances (reliability review). After one failure, the
next calls fail at once for `UNANSWERED_SKIP_SECONDS`; what they stood for is already
optional (the rate limit is not applied, the sweeper or the next message's claim sends
the study).
"""

from __future__ import annotations

import time

from django.conf import settings


class FailFast:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._skip_until = 0.0

    def skipping(self) -> bool:
        return self._clock() < self._skip_until

    def failed(self) -> None:
        self._skip_until = self._clock() + settings.UNANSWERED_SKIP_SECONDS

    def reset(self) -> None:
        self._skip_until = 0.0
