"""One SIR epidemic: integrate the model with RK4 and write its summary as JSON.

    dS/dt = -BETA S I,   dI/dt = BETA S I - GAMMA I,   dR/dt = GAMMA I

S, I and R are fractions of the population (S + I + R = 1), starting from I = 0.001,
R = 0, over 160 days with a step of 0.1 day.

    python3 sir.py BETA GAMMA [--id SAMPLE_ID] [--out result.json]

The result holds the inputs, R0 = BETA / GAMMA, the peak infected fraction, the day of
the peak and the final recovered fraction.
"""

from __future__ import annotations

import argparse
import json

DAYS = 160
DT = 0.1
I0 = 1e-3


def _rates(beta: float, gamma: float, s: float, i: float) -> tuple[float, float, float]:
    infection, recovery = beta * s * i, gamma * i
    return -infection, infection - recovery, recovery


def simulate(beta: float, gamma: float, days: int = DAYS, dt: float = DT,
             i0: float = I0) -> dict:
    """Integrate from (1 - i0, i0, 0); the summary of the trajectory, rounded to 8 places."""
    s, i, r = 1.0 - i0, i0, 0.0
    peak, peak_day = i, 0.0
    steps = round(days / dt)
    for n in range(1, steps + 1):
        k1 = _rates(beta, gamma, s, i)
        k2 = _rates(beta, gamma, s + dt / 2 * k1[0], i + dt / 2 * k1[1])
        k3 = _rates(beta, gamma, s + dt / 2 * k2[0], i + dt / 2 * k2[1])
        k4 = _rates(beta, gamma, s + dt * k3[0], i + dt * k3[1])
        s += dt / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        i += dt / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        r += dt / 6 * (k1[2] + 2 * k2[2] + 2 * k3[2] + k4[2])
        if i > peak:
            peak, peak_day = i, n * dt
    return {
        "beta": beta,
        "gamma": gamma,
        "r0": round(beta / gamma, 8),
        "peak_infected": round(peak, 8),
        "peak_day": round(peak_day, 1),
        "final_recovered": round(r, 8),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("beta", type=float)
    ap.add_argument("gamma", type=float)
    ap.add_argument("--id", type=int, default=None, help="the sample's row, recorded as is")
    ap.add_argument("--out", default="result.json")
    args = ap.parse_args()
    result = simulate(args.beta, args.gamma)
    if args.id is not None:
        result = {"sample_id": args.id, **result}
    with open(args.out, "w") as f:
        json.dump(result, f)
        f.write("\n")


if __name__ == "__main__":
    main()
