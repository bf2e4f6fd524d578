"""Fuzzing of the trust boundary: the frame decoder and the apply path.

    python -m fuzz decode --runs 1000000            # atheris (coverage-guided)
    python -m fuzz apply --runs 200000
    python -m fuzz decode --engine hypothesis --runs 100000

`targets.py` holds the two targets (what one input does, and what must
hold after it); `strategies.py` the Hypothesis strategies that both the
long runs and the test suite (tests/test_fuzz.py, a short pass in CI)
draw hostile frames from.  Long runs are not part of the suite;
docs/security.md records their figures.
"""
