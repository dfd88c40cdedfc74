"""Hypothesis profiles for the robustness suite.

`ci` (chosen when CI=true) derandomizes: the same examples on every run, so a CI
failure reproduces and a green run stays green without a change. `dev` explores new
examples each run. Neither keeps an example database: rtest copies the tree afresh.
Example counts are set per test, small enough for the suite's time budget.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")
