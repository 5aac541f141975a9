"""Hypothesis profiles: the default (100 examples) for a thorough run, "quick" (`--hypothesis-profile quick`)
for mtd's own test suite, which runs these tests on a small shared CI machine."""

from hypothesis import settings

settings.register_profile("quick", max_examples=20, deadline=None)
