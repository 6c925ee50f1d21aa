"""Write SIR parameter samples as CSV: one ``BETA,GAMMA`` row per sample, no header.

Merlin reads a ``.csv`` samples file with ``numpy.loadtxt(delimiter=",")``, so the file
holds only numbers (a header line would become a sample). Row i is sample i
(``$(MERLIN_SAMPLE_ID)``). The seed is fixed: the same command writes the same file.

    python3 make_samples.py OUT.csv [-n 1000] [--seed SEED]
"""

from __future__ import annotations

import argparse
import random

# Contact rate per day and recovery rate per day (an infectious period of 4 to 14 days):
# R0 = BETA / GAMMA spans about 0.28 to 15.4, below and well above the epidemic threshold 1.
BETA_RANGE = (0.07, 1.1)
GAMMA_RANGE = (1 / 14, 1 / 4)
SEED = 20240601


def samples(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` rows of (BETA, GAMMA), uniform in their ranges, formatted as written."""
    rng = random.Random(seed)
    return [(f"{rng.uniform(*BETA_RANGE):.6f}", f"{rng.uniform(*GAMMA_RANGE):.6f}")
            for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("-n", type=int, default=1000, help="number of samples (default 1000)")
    ap.add_argument("--seed", type=int, default=SEED, help=f"default {SEED}")
    args = ap.parse_args()
    with open(args.out, "w") as f:
        f.writelines(f"{b},{g}\n" for b, g in samples(args.n, args.seed))


if __name__ == "__main__":
    main()
