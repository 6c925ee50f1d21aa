"""Gather every sample's result.json into one CSV and draw peak infected against R0 as SVG.

    python3 collect.py --samples SAMPLES.csv --results 'GLOB/result.json' \
        [--csv results.csv] [--svg peak_vs_r0.svg]

``--results`` is a glob pattern (quoted, so the shell leaves it alone: there may be more
results than fit on a command line). Each result must name its ``sample_id`` and carry that
row's BETA and GAMMA; a missing, duplicated or mismatched sample is an error (exit 1),
after the CSV and the plot of what was found have been written.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import sys
from xml.sax.saxutils import escape

FIELDS = ["sample_id", "beta", "gamma", "r0", "peak_infected", "peak_day", "final_recovered"]

# Plot geometry (SVG user units) and the log-scaled R0 axis.
W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 480, 70, 20, 40, 60
R0_TICKS = [0.25, 0.5, 1, 2, 4, 8, 16]


def read_samples(path: str) -> list[tuple[float, float]]:
    with open(path) as f:
        return [(float(b), float(g)) for b, g in csv.reader(f)]


def read_results(pattern: str) -> list[dict]:
    results = []
    for path in glob.iglob(pattern):
        with open(path) as f:
            results.append(json.load(f))
    results.sort(key=lambda r: r["sample_id"])
    return results


def check(samples: list[tuple[float, float]], results: list[dict]) -> list[str]:
    """What is wrong with the results, given the samples (empty when nothing is)."""
    problems = []
    seen = [r["sample_id"] for r in results]
    if len(set(seen)) != len(seen):
        problems.append(f"{len(seen) - len(set(seen))} duplicated sample ids")
    missing = set(range(len(samples))) - set(seen)
    if missing:
        problems.append(f"{len(missing)} of {len(samples)} samples have no result "
                        f"(first: {min(missing)})")
    for r in results:
        sid = r["sample_id"]
        if not 0 <= sid < len(samples) or (r["beta"], r["gamma"]) != samples[sid]:
            problems.append(f"sample {sid}: result for ({r['beta']}, {r['gamma']}) does "
                            "not match its row")
            break
    return problems


def write_csv(path: str, results: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(results)


def svg(results: list[dict]) -> str:
    """A scatter of R0 (log axis) against the peak infected fraction, one circle a sample."""
    lo, hi = math.log(R0_TICKS[0]), math.log(R0_TICKS[-1])
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(r0: float) -> float:
        return LEFT + (math.log(min(max(r0, R0_TICKS[0]), R0_TICKS[-1])) - lo) / (hi - lo) * pw

    def y(frac: float) -> float:
        return TOP + (1 - frac) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">'
           f'SIR: peak infected fraction against R0 ({len(results)} samples)</text>',
           f'<g stroke="#999" fill="none"><rect x="{LEFT}" y="{TOP}" width="{pw}" '
           f'height="{ph}"/></g>']
    for t in R0_TICKS:
        out.append(f'<line x1="{x(t):.1f}" y1="{TOP + ph}" x2="{x(t):.1f}" y2="{TOP + ph + 5}" '
                   f'stroke="#333"/><text x="{x(t):.1f}" y="{TOP + ph + 18}" '
                   f'text-anchor="middle">{t:g}</text>')
    for k in range(6):
        f = k / 5
        out.append(f'<line x1="{LEFT - 5}" y1="{y(f):.1f}" x2="{LEFT}" y2="{y(f):.1f}" '
                   f'stroke="#333"/><text x="{LEFT - 8}" y="{y(f) + 4:.1f}" '
                   f'text-anchor="end">{f:.1f}</text>')
    out.append(f'<line x1="{x(1):.1f}" y1="{TOP}" x2="{x(1):.1f}" y2="{TOP + ph}" '
               'stroke="#c33" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{W / 2}" y="{H - 15}" text-anchor="middle">'
               f'{escape("R0 = BETA / GAMMA (log scale)")}</text>')
    out.append(f'<text transform="translate(18 {TOP + ph / 2}) rotate(-90)" '
               'text-anchor="middle">peak infected fraction</text>')
    out.append('<g fill="#1f6fb4" fill-opacity="0.55">')
    out.extend(f'<circle cx="{x(r["r0"]):.1f}" cy="{y(r["peak_infected"]):.1f}" r="2.5">'
               f'<title>sample {r["sample_id"]}</title></circle>' for r in results)
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", required=True, help="the samples CSV (BETA,GAMMA rows)")
    ap.add_argument("--results", required=True, help="glob pattern of the result.json files")
    ap.add_argument("--csv", default="results.csv")
    ap.add_argument("--svg", default="peak_vs_r0.svg")
    args = ap.parse_args()
    samples = read_samples(args.samples)
    results = read_results(args.results)
    write_csv(args.csv, results)
    with open(args.svg, "w") as f:
        f.write(svg(results))
    problems = check(samples, results)
    for p in problems:
        print(f"collect: {p}", file=sys.stderr)
    print(f"collect: {len(results)} results of {len(samples)} samples -> {args.csv}, {args.svg}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
