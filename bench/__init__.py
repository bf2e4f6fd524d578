"""Benchmarks of syncmesh: capture overhead, end-to-end throughput, write->visible latency.

Run from the repository root:

    python -m bench                  # every scenario, 3 repeats each
    python -m bench capture          # one scenario (capture | e2e | latency)
    python -m bench --repeats 5 e2e
    python -m bench profile          # cProfile of one batch's path, in-process, by stage
    python -m bench e2e --py-spy .tools/bin/py-spy   # + per-thread node profiles

Scenarios: capture (capture.py), e2e (e2e.py), latency (latency.py); node
processes are started by nodes.py (`python -m syncmesh serve`, port 0, on
127.0.0.1) and always stopped.  An e2e run is bounded by --e2e-timeout
(default 20 s): a slower run reports the rows visible by then per second,
a lower bound, and says so under the table.

Every figure is the median of N repeats with its min and max, and wherever a
baseline exists it is measured in the same repeat and the figure is reported
as a ratio against it (the machine is noisy).  Results go to stdout as a table
and to bench/results/latest.json.
"""
