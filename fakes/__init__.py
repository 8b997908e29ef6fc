"""Fakes of the outside systems (fal's queue, its webhook signing, Telegram's Bot API).

Used by the tests, the benchmarks and the demo run; never imported by production code
(the Docker image does not even contain this package).
"""
