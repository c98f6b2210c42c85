"""Benchmark: a CPU training step with OpenMP threads that spin (ACTIVE) or sleep (PASSIVE).

Every `nadir` command sets OMP_WAIT_POLICY=PASSIVE unless the environment sets it (cli.main).
This script trains the sample's default model (SSDlite, batch 4, 256 px chips, from random
initialisation, AdamW) on chips it generates, for `--steps` steps after one warm-up step, in
a fresh process per policy (OpenMP reads the policy when torch loads), round-robin `--repeat`
times, and prints per policy the best seconds and CPU seconds per step, the ratio, and the
load average. The difference shows on cores that other work shares; run it on an idle machine
too to see what PASSIVE costs there.

    python bench/omp_wait.py                 # 2 threads, 3 steps, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, os, sys, time
sys.path.insert(0, {src!r})
import torch
from nadir.train.models import build_detector
torch.manual_seed(0)
torch.set_num_threads({threads})
model = build_detector("ssdlite320_mobilenet_v3_large", 3, 256)
model.train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
images = [torch.rand(3, 256, 256) for _ in range(4)]
targets = [{{"boxes": torch.tensor([[20.0, 30.0, 90.0, 80.0], [120.0, 140.0, 200.0, 230.0]]),
            "labels": torch.tensor([1, 2])}} for _ in images]

def step():
    losses = model(images, targets)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()

step()
wall, cpu = time.perf_counter(), time.process_time()
for _ in range({steps}):
    step()
print(json.dumps({{"seconds": (time.perf_counter() - wall) / {steps},
                  "cpu_seconds": (time.process_time() - cpu) / {steps}}}))
"""


def measure(policy: str, args) -> dict:
    code = CHILD.format(src=str(ROOT / "src"), threads=args.threads, steps=args.steps)
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} before", flush=True)
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for policy in ("ACTIVE", "PASSIVE"):
            started = time.strftime("%H:%M:%S")
            r = measure(policy, args)
            print(f"  {policy:<8} {r['seconds']:.2f} s/step, {r['cpu_seconds']:.2f} CPU s/step "
                  f"(from {started}, load {os.getloadavg()[0]:.2f})", flush=True)
            if policy not in best or r["seconds"] < best[policy]["seconds"]:
                best[policy] = r
    active, passive = best["ACTIVE"], best["PASSIVE"]
    print(f"best of {args.repeat}, {args.threads} threads: ACTIVE {active['seconds']:.2f} s/step "
          f"({active['cpu_seconds']:.2f} CPU s), PASSIVE {passive['seconds']:.2f} s/step "
          f"({passive['cpu_seconds']:.2f} CPU s): PASSIVE is "
          f"{active['seconds'] / passive['seconds']:.2f} x faster; load average "
          f"{os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
