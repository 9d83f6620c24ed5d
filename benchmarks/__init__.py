"""asv benchmarks of fastpool (see asv.conf.json at the repository root).

Every benchmark here is generated from the case table in ``fastpool/bench.py`` (loaded by
:mod:`benchmarks.cases`); ``python -m fastpool bench`` reads the same table.
"""
