"""Aggregate fit.json files into a Markdown table sorted by noise level."""

import argparse
import json

parser = argparse.ArgumentParser()
parser.add_argument("fits", nargs="+")
parser.add_argument("--true-rate", type=float, required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

fits = sorted((json.load(open(p)) for p in args.fits), key=lambda f: f["noise"])
lines = ["| noise | fitted rate | error |", "|---:|---:|---:|"]
for f in fits:
    lines.append(f"| {f['noise']} | {f['rate']:.4f} | {abs(f['rate'] - args.true_rate):.4f} |")
with open(args.out, "w") as fh:
    fh.write("\n".join(lines) + "\n")
print("\n".join(lines))
