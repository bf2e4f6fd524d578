"""Two live files with one site id: tell a twin from a restart (issue 12, defect 7).

A file copied after `init` has the original's site id and incarnation, so
one HELLO cannot tell the copy from the original.  Each running process
therefore sends a random `instance` in its HELLO (`protocol.Hello`).  A
node that already holds a session with a site, and is greeted by another
instance of the same site id, sees one of two things:

- a restart: the old process is gone, but its session has not ended here
  yet (the heartbeat ends a dead session within 1.5 heartbeats);
- a twin: two processes of two files with one identity, both alive.

`IdentityGuard` waits `grace_s` (longer than the heartbeat needs to end a
dead session) before it calls the newcomer a twin: if the old session is
still registered after that, both are alive.  Until then the newcomer is
turned away as a duplicate, which it retries like any other.  Once a twin
is found, every session of that site id is refused while two instances of
it keep coming back within `window_s` (longer than a dialer's longest
backoff): when only one is left (the copy was stopped, or given a new
site id), that one is admitted again.

The guard is pure bookkeeping over an injected monotonic clock: the node
turns its verdicts into refusals and log lines.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class Verdict(enum.Enum):
    ADMIT = "admit"  # no session holds the site id: register the newcomer
    DUPLICATE = "duplicate"  # a session holds it (same process, or a restart to wait out)
    TWIN = "twin"  # two live files share the site id: refuse loudly


@dataclass(slots=True)
class IdentityGuard:
    """Remembers, per site id, the instances seen and since when they contend."""

    grace_s: float
    window_s: float
    now: Callable[[], float] = time.monotonic
    # site id -> (the instance turned away while another held the site, first seen)
    _contenders: dict[str, tuple[str, float]] = field(default_factory=dict)
    # site id -> {instance: last seen}, for site ids found to be twins
    _twins: dict[str, dict[str, float]] = field(default_factory=dict)

    def check(self, site_id: str, instance: str, holder: str | None) -> Verdict:
        """The verdict on a HELLO of `site_id` from `instance`.

        `holder` is the instance of the session that holds `site_id` now,
        None if no session does.  An empty instance (a peer from before the
        field) is never called a twin: it cannot be told from a restart.
        """
        now = self.now()
        seen = self._twins.get(site_id)
        if seen is not None:
            for alive in (instance, holder):
                if alive:
                    seen[alive] = now
            if sum(1 for at in seen.values() if now - at <= self.window_s) >= 2:
                return Verdict.TWIN
            del self._twins[site_id]  # only one copy left: it may sync again
        if holder is None:
            self._contenders.pop(site_id, None)
            return Verdict.ADMIT
        if not instance or not holder or instance == holder:
            return Verdict.DUPLICATE
        contender = self._contenders.get(site_id)
        if contender is None or contender[0] != instance:
            self._contenders[site_id] = (instance, now)
            return Verdict.DUPLICATE
        if now - contender[1] < self.grace_s:
            return Verdict.DUPLICATE
        del self._contenders[site_id]
        self._twins[site_id] = {holder: now, instance: now}
        return Verdict.TWIN

    def twins(self) -> list[str]:
        """The site ids that two live files share, as far as this node saw lately."""
        now = self.now()
        return sorted(
            site
            for site, seen in self._twins.items()
            if sum(1 for at in seen.values() if now - at <= self.window_s) >= 2
        )
