"""Simulate y = exp(-rate * t) with multiplicative Gaussian noise; write t,y as CSV."""

import argparse
import math
import random

parser = argparse.ArgumentParser()
parser.add_argument("--samples", type=int, required=True)
parser.add_argument("--rate", type=float, required=True)
parser.add_argument("--noise", type=float, required=True)
parser.add_argument("--seed", type=int, required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

rng = random.Random(args.seed)
with open(args.out, "w") as fh:
    fh.write("t,y\n")
    for i in range(args.samples):
        t = 5.0 * i / args.samples
        y = math.exp(-args.rate * t) * (1.0 + rng.gauss(0.0, args.noise))
        fh.write(f"{t:.6f},{max(y, 1e-12):.9f}\n")
