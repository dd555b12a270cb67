"""Serial vs Ray executor on one LM preset, side by side in one run.

    python benchmarks/lm_executor.py [--config configs/lm/cpu-quick.yaml] [--out docs/results/lm_executor.json]

Runs ``python -m lm_experiments run`` on the preset twice into fresh output directories (the
data cache is shared and warmed first, so neither run prepares data): once with
``--executor serial`` (one run at a time, the preset's ``threads``), once with
``--executor ray`` (local Ray on every core, one task per run). Prints both wall times, the
ratio ray / serial (target: at most 0.6 on the 2-core machine) and whether the two frontier
tables are bitwise identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(config: str, out: Path, *extra: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lm_experiments", "run", "--config", config, "--out", str(out),
                    "--no-progress", *extra], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/lm/cpu-quick.yaml")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        subprocess.run([sys.executable, "-m", "lm_experiments", "run", "--config", args.config, "--out",
                        str(t / "dry"), "--dry-run", "--probe", "--no-progress"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        serial = _run(args.config, t / "serial", "--executor", "serial")
        print(f"serial: {serial:7.1f} s")
        ray = _run(args.config, t / "ray", "--executor", "ray")
        print(f"ray:    {ray:7.1f} s ({os.cpu_count()} cores)")
        same = (t / "serial" / "frontier.csv").read_bytes() == (t / "ray" / "frontier.csv").read_bytes()
    ratio = ray / serial
    print(f"ratio ray / serial: {ratio:.3f} (target <= 0.6); frontier tables bitwise identical: {same}")
    if args.out:
        Path(args.out).write_text(json.dumps({"config": args.config, "serial_s": round(serial, 1),
                                              "ray_s": round(ray, 1), "ratio": round(ratio, 3), "cores": os.cpu_count(),
                                              "frontier_identical": same}, indent=1) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
