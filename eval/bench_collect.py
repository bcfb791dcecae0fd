"""Peak memory of `tokworld collect` at several step counts: it must not grow with the dataset.

    python -m tokworld.eval.bench_collect --steps 2000 20000

Each collection runs in its own subprocess; its peak resident set size comes from `wait4`.
Prints JSON: `{"2000": peak_rss_mb, "20000": peak_rss_mb, "ratio": largest / smallest}`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def peak_rss_mb(env_id: str, steps: int, seed: int = 0) -> float:
    """Peak RSS in MiB of one `tokworld collect` subprocess writing `steps` steps of `env_id`."""
    with tempfile.TemporaryDirectory(prefix="bench-collect-") as tmp:
        cmd = [sys.executable, "-m", "tokworld", "collect", "--env", env_id]
        cmd += ["--steps", str(steps), "--seed", str(seed), "--out", str(Path(tmp) / "data")]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {stderr.decode(errors='replace')}")
    return usage.ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> dict:
    """Measure each step count, print and return `{steps: peak_rss_mb, ..., "ratio": r}`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ALE/Breakout-v5")
    parser.add_argument("--steps", type=int, nargs="+", default=[2000, 20000])
    args = parser.parse_args(argv)
    steps = sorted(args.steps)
    result: dict = {str(n): round(peak_rss_mb(args.env, n), 1) for n in steps}
    result["ratio"] = round(result[str(steps[-1])] / result[str(steps[0])], 3)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
