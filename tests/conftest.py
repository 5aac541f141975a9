"""Shared test configuration: hypothesis profiles sized for a 2-core CI machine.

"ci" (the default) is derandomized: the same examples every run, so a red CI is reproducible and never a draw of
luck. "explore" draws new examples each run (MTD_HYPOTHESIS_PROFILE=explore), to hunt for bugs before a change lands.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("MTD_HYPOTHESIS_PROFILE", "ci"))
