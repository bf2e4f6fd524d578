"""Benchmarks of syncmesh against the targets of issue 4.

Run from the repository root:

    python -m bench all              # every scenario at the issue's sizes, 3 repeats each
    python -m bench all --quick      # every scenario at small sizes, 1 repeat: a smoke run
    python -m bench capture          # one scenario, or several, by name
    python -m bench --repeats 5 e2e
    python -m bench profile          # cProfile of one batch's path, in-process, by stage
    python -m bench e2e --py-spy .tools/bin/py-spy   # + per-thread node profiles
    python -m bench curve            # latency above the floor at 1..1000 txn/s (issue 17)
    python -m bench peers            # beside pysyncobj and NATS KV; needs the [bench] extra

Scenarios: capture (capture.py: trigger and capture overhead against a plain
table), e2e (e2e.py: rows/s through a chain and a mesh of three nodes),
latency (latency.py: write -> visible at a peer under light load), curve
(latency.py: the same above the local floor at each write rate of issue 17),
bootstrap and wire (bulk.py: a new node syncs a 1M-row table; bytes on the
wire for 1% random updates, through a byte-counting proxy, proxy.py), mixed
(mixed.py: inserts, updates, deletes at all three nodes of a mesh; lag),
idle (idle.py: CPU of a node with no writes), and, only when named, metadata
(metadata.py: bytes per row and per cell of the bookkeeping, and layouts.py: what
candidate shadow layouts would take, issue 16), fleet
(fleet.py: N sites over a 3-server NATS JetStream cluster against a WebSocket
star and mesh, issue 15), snapshot (snapshot.py: `syncmesh join` against the
replay of the same table, issue 16), soak (soak.py: three nodes under churn
for 30 minutes; does the file level off once tombstones are collected, issue
16), peers (peers.py, peer_syncobj.py, peer_nats.py: the same writes on
pysyncobj, NATS JetStream KV and syncmesh, issue 17) and large_row
(large_row.py: one 30 MiB row between two nodes with a 1 s heartbeat: the
event loop's slowest answer against idle, and sessions dropped).  Node processes are started
by nodes.py (`python -m syncmesh serve`, port 0, on 127.0.0.1) and always
stopped; every load loop is bounded in count and time.

Every figure is the median of N repeats with its min and max, and wherever a
baseline exists it is measured in the same repeat and the figure is reported
as a ratio against it (the machine is noisy).  Each figure with a target of
the issue says whether its median meets it.  Results go to stdout as a
table and to bench/results/latest.json.
"""
