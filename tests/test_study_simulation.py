"""The study's verdict procedure does not cry wolf: simulated studies, sequential seeds included.

Per-query outcomes are drawn from a model with every level a real study has, and the whole
procedure (``unitune.study.sequential.run_looks``: rounds of seeds, the two-level comparison,
Holm over the comparisons, Pocock levels over the looks) runs on them. Under no difference
the rate of studies that claim any difference must be at most 5% plus three Monte-Carlo
standard errors; a known gap must be found at a rate printed here (and in docs/study.md).

The model of one run's latent score for a query (higher = ranked better):

    z = mu_family + difficulty_q + fit_{family,q} + seed_{family,seed} + noise_{run,q}

``difficulty`` is shared by all families (the same queries), ``fit`` is how the family's
configuration suits that query (fixed over seeds: the query level a study must resample),
``seed`` shifts a whole run (with a part shared by the families' runs of the same seed:
same initial weights and data order), ``noise`` varies per run and query. The rank is
``1 + floor(G * Phi(-z))`` in a gallery of G. Each scenario weights the levels differently:
a procedure that ignores the spread between seeds fails the first, one that ignores the
queries fails the second.
"""

import numpy as np
import pytest
from scipy import stats

from unitune.ranks import QueryRanks
from unitune.study.sequential import run_looks, sizes
from unitune.study.stats import Outcomes, bootstrap_weights

CLUSTERS, CAPTIONS, GALLERY = 120, 2, 240
BASE = 1.8  # the mean latent score: RSUM about 250 of 600, as the emoji set's
STUDIES = 1000
RESAMPLES = 400  # the bootstrap's resamples per study (the real study uses stats.RESAMPLES)
SCENARIOS = {  # sd of: fit (family x query), seed (per run), shared seed part, noise (run x query)
    "seeds dominate": dict(fit=0.2, seed=0.1, shared=0.05, noise=0.3),  # run sd ~16 RSUM
    "queries dominate": dict(fit=0.8, seed=0.01, shared=0.0, noise=0.3),
    "run noise dominates": dict(fit=0.1, seed=0.01, shared=0.0, noise=1.0),
}


class World:
    """Draws a study's queries and its families' runs; ``gaps``: each family's mu."""

    def __init__(self, rng, gaps, fit, seed, shared, noise):
        self.rng, self.gaps = rng, gaps
        self.sd = dict(seed=seed, noise=noise)
        n_queries = CLUSTERS * (1 + CAPTIONS)
        self.difficulty = rng.normal(0.0, 1.0, n_queries)
        self.fit = {f: rng.normal(0.0, fit, n_queries) for f in gaps}
        self.shared = rng.normal(0.0, shared, 64)  # per seed, the same for every family
        self.runs = {f: {} for f in gaps}
        self.item_ids = np.arange(CLUSTERS)
        self.caption_items = np.repeat(np.arange(CLUSTERS), CAPTIONS)

    def train(self, families, seeds):
        for f in families:
            for s in seeds:
                if (0, s) in self.runs[f]:
                    continue
                z = (BASE + self.gaps[f] + self.difficulty + self.fit[f] + self.shared[s]
                     + self.rng.normal(0.0, self.sd["seed"]) + self.rng.normal(0.0, self.sd["noise"], len(self.difficulty)))
                rank = 1 + np.floor(GALLERY * stats.norm.sf(z)).astype(np.int64)
                ranks = QueryRanks(self.item_ids, self.item_ids, rank[:CLUSTERS], self.caption_items, rank[CLUSTERS:])
                self.runs[f][(0, s)] = Outcomes.from_ranks(ranks, "rsum")

    def outcomes(self):
        return self.runs


def simulate(gaps, scenario, studies=STUDIES, first=3, maximum=9, seed=0):
    """Fraction of studies that resolved each comparison (and any), and the seeds used."""
    rng = np.random.default_rng(seed)
    names = list(gaps)
    resolved = {n: 0 for n in names[1:]}
    wrong_side, any_claim, seeds_used = 0, 0, []
    for _ in range(studies):
        world = World(rng, gaps, **SCENARIOS[scenario])
        looks = run_looks(names[0], names[1:], sizes(first, maximum), train=world.train,
                          outcomes=world.outcomes, resamples=RESAMPLES)
        last = looks[-1]
        claims = [d for d in last.decisions if d.resolved]
        any_claim += bool(claims)
        for d in claims:
            resolved[d.comparison.name] += 1
            true_gap = gaps[d.comparison.name] - gaps[names[0]]
            wrong_side += true_gap != 0 and np.sign(d.comparison.mean) != np.sign(true_gap)
        seeds_used.append(last.seeds)
    return {n: c / studies for n, c in resolved.items()}, any_claim / studies, wrong_side, np.mean(seeds_used)


def bound(rate=0.05, n=STUDIES):
    return rate + 3 * np.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_difference_is_claimed_at_most_5_percent(scenario):
    # three identical families (in distribution): two comparisons with the reference, four looks at most
    per, family_wise, _, seeds = simulate({"ref": 0.0, "b": 0.0, "c": 0.0}, scenario, seed=1)
    print(f"\n{scenario}: false claims in {family_wise:.3f} of {STUDIES} studies "
          f"(per comparison {per}), mean seeds {seeds:.1f}; bound {bound():.3f}")
    assert family_wise <= bound()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_known_gap_is_found_on_its_side(scenario):
    # a gap of 0.25 latent sd (27 to 46 RSUM, by the scenario) against the reference; the other family equal
    per, _, wrong, seeds = simulate({"ref": 0.0, "gap": 0.25, "same": 0.0}, scenario, studies=300, seed=2)
    print(f"\n{scenario}: the gap resolved in {per['gap']:.2f} of 300 studies, the equal family in "
          f"{per['same']:.3f}, mean seeds {seeds:.1f}")
    assert wrong == 0
    assert per["gap"] >= 0.75
    assert per["same"] <= bound(n=300)


def test_a_percentile_two_level_bootstrap_would_cry_wolf():
    # Why the study does not take the percentile interval of a bootstrap over seeds and queries:
    # with 3 seeds whose spread dominates, that interval excludes 0 far more often than 5%.
    rng = np.random.default_rng(3)
    weights = bootstrap_weights(CLUSTERS, RESAMPLES, seed=3)
    claims, studies = 0, 400
    for _ in range(studies):
        world = World(rng, {"ref": 0.0, "b": 0.0}, **SCENARIOS["seeds dominate"])
        world.train(["ref", "b"], range(3))
        per_seed = np.array([world.runs["b"][(0, s)].value(weights) - world.runs["ref"][(0, s)].value(weights)
                             for s in range(3)])  # [seeds, resamples]
        picks = rng.integers(0, 3, size=(RESAMPLES, 3))  # seeds resampled with replacement
        boot = per_seed[picks, np.arange(RESAMPLES)[:, None]].mean(axis=1)
        low, high = np.quantile(boot, [0.025, 0.975])
        claims += low > 0 or high < 0
    print(f"\npercentile two-level bootstrap, 3 seeds: false claims in {claims / studies:.3f} of {studies}")
    assert claims / studies > bound(n=studies)
