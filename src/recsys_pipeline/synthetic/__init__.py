"""Seeded generators of every raw format the project reads, with a known signal: e-commerce
event logs in the public datasets' formats (:mod:`.sessions`) and MovieLens-style ratings
(:mod:`.ratings`). Tests and the default run use them, so nothing real is needed."""
