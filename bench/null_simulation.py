"""False-positive rate and power of the hybrid - real-only tests, by simulation.

    python bench/null_simulation.py                      # the full table (about a minute on 2 cores)
    python bench/null_simulation.py --experiments 500    # quicker, noisier

Each simulated experiment draws a fresh test set of n images and trains (draws) 5 seeds per arm, then runs
the leaderboard's tests on the accuracy difference:

- primary: `stats.variance_components` + Welch t (seeds and test images), what Table IV's verdict uses;
- secondary: exact McNemar on the two arms' seed ensembles (majority vote), what the leaderboard used to
  call the verdict.

The data-generating model (probit): image i has a difficulty z_i ~ N(mu, tau^2) shared by both arms; each
arm has its own per-image deviation g ~ N(0, gamma^2) (two recipes disagree on some images even when they are
equally good on average, so test-set sampling matters); each run (seed) has a shift u ~ N(0, sigma_u^2)
common to all images; run s of arm a is right on image i with probability Phi(z_i + g_ai + u_as (+ delta)).
sigma_u is set so that the SD over seeds of a run's test accuracy (the "±" of the leaderboard) is the
requested seed SD at that n. Under the null both arms have the same population accuracy (about 80 %);
`delta` shifts the hybrid arm by +4 pp for the power column.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dermt2im_hub.evaluation.stats import t_test_from_components, variance_components  # noqa: E402

ACCURACY = 0.80  # population accuracy of both arms under the null
TAU = 7.0  # image difficulty spread (probit): two seeds of one recipe disagree on about 5 % of images
GAMMA = 1.4  # per-image arm deviation (probit): the two recipes' ensembles disagree on about 7 % of images
SEEDS = 5
ALPHA = 0.05
CELLS = [(n, sd) for n in (227, 659) for sd in (1.0, 2.0, 3.0)]


def _scale() -> float:
    return math.sqrt(1 + TAU ** 2 + GAMMA ** 2)


def _mu() -> float:
    return sps.norm.ppf(ACCURACY) * _scale()


def run_shift_sd(n: int, seed_sd_pp: float) -> float:
    """sigma_u giving a per-run accuracy SD of `seed_sd_pp` on n images (0 when the image noise alone
    already exceeds it)."""
    grid = np.linspace(-6, 6, 4001)
    z = _mu() + math.sqrt(TAU ** 2 + GAMMA ** 2) * grid
    p = sps.norm.cdf(z)
    density = sps.norm.pdf(grid) * (grid[1] - grid[0])
    within = float((density * p * (1 - p)).sum()) / n  # Bernoulli noise of one run's accuracy
    slope = float((density * sps.norm.pdf(z)).sum())  # d accuracy / d u
    systematic = (seed_sd_pp / 100) ** 2 - within
    return math.sqrt(systematic) / slope if systematic > 0 else 0.0


def simulate(n: int, seed_sd_pp: float, experiments: int, effect_pp: float = 0.0, seed: int = 0,
             chunk: int = 250) -> dict[str, float]:
    """Rejection rates at ALPHA of the primary and the ensemble McNemar test over `experiments` experiments."""
    rng = np.random.default_rng([seed, n, int(seed_sd_pp * 10), int(effect_pp * 10)])
    sigma_u = run_shift_sd(n, seed_sd_pp)
    mu = _mu()
    delta = sps.norm.ppf(ACCURACY + effect_pp / 100) * _scale() - mu
    strata = [(np.ones(n, dtype=bool), 1.0)]
    primary, mcnemar, seed_sds, disagreements, discordance = [], [], [], [], []
    for start in range(0, experiments, chunk):
        size = min(chunk, experiments - start)
        z = mu + TAU * rng.standard_normal((size, 1, n))
        arms = []
        for shift in (delta, 0.0):
            g = GAMMA * rng.standard_normal((size, 1, n))
            u = sigma_u * rng.standard_normal((size, SEEDS, 1))
            arms.append((rng.random((size, SEEDS, n)) < sps.norm.cdf(z + g + u + shift)).astype(np.float64))
        hybrid, real = arms
        parts = variance_components(hybrid, real, strata)
        primary.append(t_test_from_components(parts["difference"], parts["variance"], parts["df"]) < ALPHA)
        # secondary: majority vote of each arm's seeds, exact McNemar on the discordant images
        vote_h, vote_r = hybrid.mean(axis=1) > 0.5, real.mean(axis=1) > 0.5
        b, c = (vote_h & ~vote_r).sum(axis=1), (~vote_h & vote_r).sum(axis=1)
        p = np.ones(size)
        discordant = b + c > 0
        p[discordant] = np.minimum(1.0, 2 * sps.binom.cdf(np.minimum(b, c)[discordant], (b + c)[discordant], 0.5))
        mcnemar.append(p < ALPHA)
        discordance.append((b + c) / n)
        seed_sds.append(real.mean(axis=2).std(axis=1, ddof=1))
        disagreements.append((real[:, 0] != real[:, 1]).mean(axis=1))
    return {"n": n, "seed_sd_pp": seed_sd_pp, "effect_pp": effect_pp, "experiments": experiments,
            "primary": float(np.concatenate(primary).mean()), "mcnemar": float(np.concatenate(mcnemar).mean()),
            "realised_seed_sd_pp": 100 * float(np.sqrt((np.concatenate(seed_sds) ** 2).mean())),
            "seed_disagreement": float(np.concatenate(disagreements).mean()),
            "ensemble_discordance": float(np.concatenate(discordance).mean())}


def table(experiments: int, effect_pp: float = 4.0) -> list[dict[str, float]]:
    rows = []
    for n, sd in CELLS:
        row = simulate(n, sd, experiments)
        if n == 659:
            power = simulate(n, sd, experiments, effect_pp=effect_pp)
            row["power_primary"], row["power_mcnemar"] = power["primary"], power["mcnemar"]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=4000, help="simulated experiments per cell")
    parser.add_argument("--effect", type=float, default=4.0, help="true hybrid gain (pp) for the power column")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = table(args.experiments, args.effect)
    se = 100 * math.sqrt(ALPHA * (1 - ALPHA) / args.experiments)
    print(f"{args.experiments} experiments per cell, {SEEDS} seeds per arm, alpha {ALPHA}, population accuracy "
          f"{ACCURACY:.0%}; Monte Carlo SE of a 5 % rate: {se:.2f} pp\n")
    print(f"| n | seed SD (pp) | realised seed SD | seed disagreement | ensemble discordance | primary FPR | "
          f"ensemble McNemar FPR | power at +{args.effect:g} pp: primary | McNemar |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        power = (f"{100 * r['power_primary']:.1f} % | {100 * r['power_mcnemar']:.1f} %" if "power_primary" in r
                 else "– | –")
        print(f"| {r['n']} | {r['seed_sd_pp']:g} | {r['realised_seed_sd_pp']:.2f} | {100 * r['seed_disagreement']:.1f} % "
              f"| {100 * r['ensemble_discordance']:.1f} % | {100 * r['primary']:.1f} % | {100 * r['mcnemar']:.1f} % | {power} |")
    print(f"\n{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
