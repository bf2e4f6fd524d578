"""python -m fuzz {decode,apply} --runs N [--engine atheris|hypothesis] [--corpus DIR]

Runs one target for N inputs and prints the figures: inputs, seconds,
inputs per second and the outcome.  The atheris engine (coverage-guided,
libFuzzer) is used when atheris is installed; `--engine hypothesis` draws
from fuzz/strategies.py instead.  A finding stops the run with exit status
1 and, for atheris, a crash-* file holding the input.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ENGINES = ("atheris", "hypothesis")
TIMEOUT_S = 10  # one input taking longer is a hang (atheris)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("target", choices=("decode", "apply"))
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--engine", choices=ENGINES, default=None)
    parser.add_argument("--corpus", type=Path, default=None, help="atheris corpus directory")
    parser.add_argument("--max-len", type=int, default=4096, help="atheris: longest input")
    parser.add_argument("--seed", type=int, default=0, help="atheris: libFuzzer -seed")
    args = parser.parse_args(argv)
    engine = args.engine or ("atheris" if _has_atheris() else "hypothesis")
    print(f"fuzz {args.target}: engine {engine}, {args.runs} inputs", flush=True)
    if engine == "atheris":
        return _atheris(args)
    return _hypothesis(args)


def _has_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _target(name: str) -> Callable[[bytes], None]:
    from fuzz.targets import ApplyTarget, decode_one

    return decode_one if name == "decode" else ApplyTarget()


def _atheris(args: argparse.Namespace) -> int:
    import atheris

    with atheris.instrument_imports(include=["syncmesh", "msgpack"]):
        from fuzz.targets import seed_frames

        target = _target(args.target)
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix=f"syncmesh-corpus-{args.target}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(seed_frames()):
        # apply: the first byte says "continue the cursor" (odd) or not.
        data = (b"\x01" + frame) if args.target == "apply" else frame
        (corpus / f"seed-{index:02d}").write_bytes(data)
    started = time.monotonic()
    count = 0

    def one(data: bytes) -> None:
        nonlocal count
        count += 1
        target(data)
        if count % 100_000 == 0 or (args.target == "apply" and count % 10_000 == 0):
            elapsed = time.monotonic() - started
            figures = getattr(target, "figures", lambda: "")()
            print(f"# {count} inputs, {count / elapsed:.0f}/s {figures}", flush=True)

    atheris.Setup(
        [
            sys.argv[0],
            f"-runs={args.runs}",
            f"-max_len={args.max_len}",
            f"-timeout={TIMEOUT_S}",
            f"-seed={args.seed}",
            "-print_final_stats=1",
            str(corpus),
        ],
        one,
    )
    atheris.Fuzz()  # exits the process: libFuzzer prints "Done N runs in S second(s)"
    return 0


def _hypothesis(args: argparse.Namespace) -> int:
    from hypothesis import HealthCheck, given, settings

    from fuzz.strategies import frames

    target = _target(args.target)
    count = 0
    started = time.monotonic()

    @settings(
        max_examples=args.runs,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(frames)
    def one(frame: bytes) -> None:
        nonlocal count
        count += 1
        target((b"\x01" if count % 2 else b"\x00") + frame if args.target == "apply" else frame)
        if count % 10_000 == 0:
            elapsed = time.monotonic() - started
            figures = getattr(target, "figures", lambda: "")()
            print(f"# {count} inputs, {count / elapsed:.0f}/s {figures}", flush=True)

    one()
    elapsed = time.monotonic() - started
    figures = getattr(target, "figures", lambda: "")()
    print(
        f"fuzz {args.target}: {count} inputs in {elapsed:.1f} s ({count / elapsed:.0f}/s),"
        f" no finding. {figures}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
