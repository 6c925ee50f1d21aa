"""Fit log(y) = -rate * t + c by least squares; write the rate as JSON."""

import argparse
import csv
import json
import math

parser = argparse.ArgumentParser()
parser.add_argument("data")
parser.add_argument("--noise", type=float, required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

with open(args.data) as fh:
    rows = [(float(r["t"]), math.log(float(r["y"]))) for r in csv.DictReader(fh)]
n = len(rows)
mt = sum(t for t, _ in rows) / n
my = sum(y for _, y in rows) / n
slope = sum((t - mt) * (y - my) for t, y in rows) / sum((t - mt) ** 2 for t, _ in rows)
with open(args.out, "w") as fh:
    json.dump({"noise": args.noise, "rate": -slope, "points": n}, fh)
