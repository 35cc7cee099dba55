"""
Standard errors for the numbers a run reports, computed from the data.

Validation scores are means over masked positions, but positions are not independent draws: the
positions of one document share its topic, its style and its rare words. The split assigns whole
documents, so the document is the unit that was sampled, and the standard error must treat each
document as one draw (a cluster). For a mean of ratios R = sum_d y_d / sum_d n_d over documents d
(y_d: the document's summed loss, say; n_d: its masked positions), the delta-method ("linearised")
variance is

    Var(R) ~ N / (N - 1) * sum_d e_d^2,   e_d = (y_d - R n_d) / sum_d n_d,

the cluster-robust standard error of survey sampling. A difference of two such means over the same
documents (far minus near positions, the same positions in two windows) has the influence e_d of
the one minus that of the other, which is how pairing cancels what the documents share. This is
what a bootstrap over documents estimates too (a test checks that the two agree); the formula is
exact arithmetic, needs no resampling and no random numbers, so logs stay bitwise reproducible.

Differences between settings of a study are different: every run is scored on the same positions,
so what separates two settings is training noise, measured by the spread of their seeds.
"""
import math

import numpy as np

SCORES = ("loss", "acc", "unigram_ce", "top_acc")  # the per-position values a DocSums adds up


class DocSums:
    """Per-document sums of the per-position scores (loss, acc, unigram_ce, top_acc) and counts."""

    def __init__(self):
        self.parts = []

    def add(self, docs, **values):
        """docs: the document of each position; values: one array per score, same length."""
        self.parts.append((np.asarray(docs, np.int64), np.stack([np.asarray(values[k], np.float64) for k in SCORES])))

    def table(self):
        """(document ids, sums (len(SCORES), D), counts (D,)), documents sorted by id."""
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros((len(SCORES), 0)), np.zeros(0)
        docs = np.concatenate([d for d, _ in self.parts])
        vals = np.concatenate([v for _, v in self.parts], axis=1)
        ids, inverse = np.unique(docs, return_inverse=True)
        sums = np.stack([np.bincount(inverse, weights=v, minlength=len(ids)) for v in vals])
        return ids, sums, np.bincount(inverse, minlength=len(ids)).astype(np.float64)


def influence(y, n):
    """Each document's influence on the ratio sum(y) / sum(n) (see above)."""
    total = n.sum()
    return (y - y.sum() / total * n) / total


def clustered_se(*influences):
    """The standard error of a sum of ratio estimates over the same documents, from their
    influences (pass -e for a term that is subtracted)."""
    e = np.sum(influences, axis=0)
    return math.sqrt(len(e) / (len(e) - 1) * float((e ** 2).sum())) if len(e) > 1 else float("nan")


def summarize(sums):
    """A group's scores with their standard errors: loss, acc, the baselines on the same positions
    (unigram_ce, top_acc), gain = unigram_ce - loss (nats of context), margin = acc - top_acc, the
    number of positions and of documents."""
    ids, s, n = sums.table()
    loss, acc, uni, top = s
    out = dict(loss=loss.sum() / n.sum(), acc=acc.sum() / n.sum(), unigram_ce=uni.sum() / n.sum(),
               top_acc=top.sum() / n.sum(), gain=(uni - loss).sum() / n.sum(), margin=(acc - top).sum() / n.sum())
    for k, y in (("loss", loss), ("acc", acc), ("gain", uni - loss), ("margin", acc - top)):
        out[f"{k}_se"] = clustered_se(influence(y, n))
    return {**out, "n": int(n.sum()), "docs": len(ids)}


def aligned(a, b):
    """Two DocSums' tables over the union of their documents (a document missing in one adds zeros)."""
    (ia, sa, na), (ib, sb, nb) = a.table(), b.table()
    ids = np.union1d(ia, ib)
    out = []
    for i, s, n in ((ia, sa, na), (ib, sb, nb)):
        S, N = np.zeros((len(SCORES), len(ids))), np.zeros(len(ids))
        at = np.searchsorted(ids, i)
        S[:, at], N[at] = s, n
        out.append((S, N))
    return out


def difference(a, b, score="gain"):
    """(mean of `score` over a's positions) - (over b's), with its clustered standard error; a and b
    are DocSums of positions of the same documents (far and near; or the same positions scored two
    ways, the long-window penalty). score: loss, acc or gain."""
    (sa, na), (sb, nb) = aligned(a, b)
    pick = lambda s: s[SCORES.index("unigram_ce")] - s[0] if score == "gain" else s[SCORES.index(score)]  # noqa: E731
    ya, yb = pick(sa), pick(sb)
    return ya.sum() / na.sum() - yb.sum() / nb.sum(), clustered_se(influence(ya, na), -influence(yb, nb))


def mean_sd(values):
    """Mean and sample standard deviation (n - 1) of the seeds' values; sd is nan for one seed."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def seed_difference(a, b):
    """The difference of two settings' means over their seeds, with its standard error from the
    seeds' spread (Welch: sqrt(sd_a^2 / n_a + sd_b^2 / n_b))."""
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    return ma - mb, math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))


def verdict(diff, se):
    """"beyond noise" when |difference| > 2 standard errors, else "within noise"."""
    return "beyond noise" if math.isfinite(se) and abs(diff) > 2 * se else "within noise"
