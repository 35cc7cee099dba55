"""support/stats.py: clustered standard errors agree with a bootstrap over documents, pairing
cancels what documents share, and the study's seed differences and verdicts."""
import math

import numpy as np
import pytest

from support import stats


def clustered_data(seed=0, docs=300):
    """Positions of documents of random sizes; each document has its own level (what its positions share)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 60, docs)
    doc = np.repeat(np.arange(docs), sizes)
    level = rng.normal(0, 1.0, docs)[doc]
    return doc, level + rng.normal(0, 2.0, len(doc)), level + rng.normal(0.3, 2.0, len(doc))


def bootstrap(doc, a, b=None, in_a=None, in_b=None, draws=2000, seed=1):
    """The spread of mean(a) (minus mean(b)) over resamples of whole documents; in_a / in_b say which
    positions each mean takes (default: all)."""
    ids, inv = np.unique(doc, return_inverse=True)
    in_a = np.ones(len(doc), bool) if in_a is None else in_a
    in_b = np.ones(len(doc), bool) if in_b is None else in_b
    ya, na = (np.bincount(inv, weights=np.where(in_a, a, 0.0), minlength=len(ids)),
              np.bincount(inv, weights=in_a.astype(float), minlength=len(ids)))
    pick = np.random.default_rng(seed).integers(0, len(ids), (draws, len(ids)))
    est = ya[pick].sum(1) / na[pick].sum(1)
    if b is not None:
        yb, nb = (np.bincount(inv, weights=np.where(in_b, b, 0.0), minlength=len(ids)),
                  np.bincount(inv, weights=in_b.astype(float), minlength=len(ids)))
        est = est - yb[pick].sum(1) / nb[pick].sum(1)
    return est.std()


def sums(doc, loss, zeros=None):
    s = stats.DocSums()
    z = np.zeros(len(doc)) if zeros is None else zeros
    s.add(doc, loss=loss, acc=z, unigram_ce=z, top_acc=z)
    return s


def test_clustered_standard_error_agrees_with_a_bootstrap_over_documents():
    doc, a, b = clustered_data()
    r = stats.summarize(sums(doc, a))
    assert r["loss"] == pytest.approx(a.mean()) and r["n"] == len(doc) and r["docs"] == 300
    assert r["loss_se"] == pytest.approx(bootstrap(doc, a), rel=0.1)
    iid = a.std() / math.sqrt(len(a))
    assert r["loss_se"] > 1.5 * iid, "positions of one document are not independent draws"
    # a paired difference (the same positions scored twice): the shared document levels cancel
    d, se = stats.difference(sums(doc, b), sums(doc, a), "loss")
    assert d == pytest.approx(b.mean() - a.mean()) and se == pytest.approx(bootstrap(doc, b, a), rel=0.1)
    assert se < r["loss_se"]


def test_difference_of_groups_with_different_positions_of_the_same_documents():
    doc, a, b = clustered_data(seed=3)
    far = np.arange(len(doc)) % 3 == 0  # some positions of each document are "far", the rest "near"
    d, se = stats.difference(sums(doc[far], -a[far]), sums(doc[~far], -a[~far]), "gain")  # gain = 0 - loss
    assert d == pytest.approx(a[far].mean() - a[~far].mean())
    assert se == pytest.approx(bootstrap(doc, a, a, in_a=far, in_b=~far), rel=0.1)


def test_seed_differences_and_verdicts():
    diff, se = stats.seed_difference([1.0, 1.2, 1.1], [0.5, 0.6, 0.4])
    assert diff == pytest.approx(0.6) and se == pytest.approx(math.sqrt(0.01 / 3 + 0.01 / 3))
    assert stats.verdict(diff, se) == "beyond noise" and stats.verdict(0.1, se) == "within noise"
    assert stats.verdict(0.5, float("nan")) == "within noise"
    assert stats.mean_sd([2.0])[0] == 2.0 and math.isnan(stats.mean_sd([2.0])[1])
