"""The fuzz suite: bad and odd inputs in each dataset's native layout, each with its expected verdict.

`layouts` writes tiny datasets exactly as they are distributed, `cases` holds the table-driven harness
(every case also checks kept + quarantined + excluded = input rows, that the good rows around the odd
one are kept intact, and that nothing is written outside the cache), and `test_fuzz_property` corrupts
rows at random with fixed seeds.
"""
