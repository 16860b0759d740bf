"""Paired per-round CPU ratios and their distribution-free interval.

Shared by bench/load.sh (run as a script on its results TSV) and bench/ab.sh
(imported). The rounds interleave the servers, so a round's runs share the
VM's state of that minute (this kind of VM drifts by 20-40 % over minutes;
BENCHMARKS.md): the figure is the median of the per-round ratios, with an
interval for that median from order statistics, whose coverage comes from
the binomial distribution (75 % at 3 rounds, 94 % at 5, 96 % at 15). No
normality is assumed.

    python3 bench/paired.py RESULTS.tsv   # load.sh's "paired by round" lines
"""

import re
import statistics
import sys
from math import comb


def interval(per):
    """(lo, hi, coverage %) for the median of `per`: the k-th smallest and
    k-th largest value, k as large as keeps the coverage at 95 % or more
    (or 1, when there are too few values for that)."""
    n = len(per)

    def cdf(k):
        return sum(comb(n, i) for i in range(k + 1)) / 2**n

    k = 1
    while k + 1 <= (n + 1) / 2 and 2 * cdf(k) <= 0.05:
        k += 1
    s = sorted(per)
    return s[k - 1], s[n - k], 100 * (1 - 2 * cdf(k - 1))


def verdict(lo, hi, cov):
    """The CPU target (<= 1.0x) as the whole interval says it, or why not."""
    if cov < 90:
        return "no verdict (fewer than 5 rounds give less than a 90 % interval)"
    if hi <= 1:
        return "MET (the whole interval)"
    if lo > 1:
        return "NOT MET (the whole interval)"
    return "parity within the noise (the interval contains 1.0)"


def load_sh(path, postern="postern-mtls"):
    """load.sh's lines: postern over nginx-mtls (with the verdict) and over
    nginx-mtls-log, from its results TSV (scenario, round, ..., cpu µs/req in
    the sixth column; a later row of a round replaces an earlier one)."""
    cpu = {}
    with open(path) as f:
        for line in f:
            col = line.rstrip("\n").split("\t")
            if len(col) < 6 or not re.fullmatch(r"[0-9]+", col[1]):
                continue
            if not re.fullmatch(r"[0-9.]+", col[5]):
                continue
            if col[0] == postern or re.fullmatch(r"nginx-mtls(-log)?", col[0]):
                cpu[col[0], int(col[1])] = float(col[5])
    rounds = max((r for _, r in cpu), default=0)
    for base, target in (("nginx-mtls", True), ("nginx-mtls-log", False)):
        per = [
            cpu[postern, r] / cpu[base, r]
            for r in range(1, rounds + 1)
            if (postern, r) in cpu and cpu.get((base, r), 0) > 0
        ]
        if len(per) < 2:
            continue
        lo, hi, cov = interval(per)
        each = "".join(f" {x:.2f}" for x in per)
        said = f" -> target <= 1.0x: {verdict(lo, hi, cov)}" if target else ""
        print(
            f"postern / {base} CPU per request, paired by round: median "
            f"{statistics.median(per):.2f}x, {cov:.0f} % interval {lo:.2f}-{hi:.2f}x "
            f"over {len(per)} rounds (each:{each}){said}"
        )


if __name__ == "__main__":
    load_sh(sys.argv[1])
