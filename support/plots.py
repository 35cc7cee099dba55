"""
Pictures of training runs, drawn from their log.jsonl: one run's train.png (train.py redraws it at
every checkpoint) and several runs side by side (plot.py).
"""
import json, os

from .errors import Refused
from .files import atomic_path

RUN_ONLY = {"data_dir", "device", "eval_interval", "ckpt_interval"}  # where and how often, not what


def read_log(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        raise Refused(f"{path}: not a readable log.jsonl ({e})")


def save(fig, out_png):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def figure(panels, sharex=False):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(panels, 1, figsize=(9, 3 * panels), sharex=sharex)


# Okabe and Ito's palette: told apart with every common colour-vision deficiency
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def plot_run(log_path, out_png):
    """train.png: masked-only validation next to its no-context baselines; long documents (near and
    far positions in last-stage windows, the near positions again in first-stage windows: the
    long-window penalty); the schedules. Error bars are one standard error (documents as the unit);
    dotted verticals mark stage switches."""
    rows = read_log(log_path)
    tr = [r for r in rows if "loss" in r]
    ev = [r for r in rows if "val_loss" in r]
    lg = [r for r in rows if "far_loss" in r]
    switches = [b["step"] - 1 for a, b in zip(tr, tr[1:]) if b["stage"] != a["stage"]]
    near = tr[0]["seq_len"] if tr else 0
    blue, red, green, purple, orange, sky = COLOURS[0], COLOURS[1], COLOURS[2], COLOURS[3], COLOURS[4], COLOURS[5]
    fig, ax = figure(4, sharex=True)
    steps = [r["step"] for r in ev]
    ax[0].plot([r["step"] for r in tr], [r["loss"] for r in tr], lw=0.5, color="0.75", label="train loss (80/10/10)")
    ax[0].errorbar(steps, [r["val_loss"] for r in ev], [r.get("val_loss_se", 0) for r in ev], fmt="o-", color=blue,
                   capsize=2, label="val loss, masked positions only (± 1 SE)")
    ax[0].plot(steps, [r["val_unigram_ce"] for r in ev], "_:" if len(ev) == 1 else ":", color=orange, ms=20,
               label="train-unigram cross-entropy, same positions (no context)")
    ax[0].set_ylabel("MLM loss (nats)")
    ax[0].legend(loc="upper right", fontsize=8)
    ax[1].errorbar(steps, [r["val_acc"] for r in ev], [r.get("val_acc_se", 0) for r in ev], fmt="s-", color=green,
                   capsize=2, label="val accuracy, masked positions (± 1 SE)")
    ax[1].plot(steps, [r["val_top_acc"] for r in ev], "_:" if len(ev) == 1 else ":", color=green, ms=20,
               label="always the most frequent token, same positions")
    ax[1].set_ylabel("accuracy")
    ax[1].legend(loc="lower right", fontsize=8)
    ls = [r["step"] for r in lg]
    for key, colour, label in [("near", blue, f"positions < {near}, long windows"),
                               ("far", red, f"positions >= {near}, long windows"),
                               ("short", sky, f"positions < {near}, {near}-token windows")]:
        if lg and f"{key}_gain" in lg[0]:
            ax[2].errorbar(ls, [r[f"{key}_gain"] for r in lg], [r[f"{key}_gain_se"] for r in lg], fmt="o-",
                           color=colour, capsize=2, label=label)
    for r in lg:
        ax[2].annotate(f"penalty {r['penalty']:+.3f} ± {r['penalty_se']:.3f}\nfar - near {r['far_near']:+.3f} ± "
                       f"{r['far_near_se']:.3f}", (r["step"], r["far_gain"]), fontsize=7, ha="right", va="top",
                       textcoords="offset points", xytext=(-6, -6))
    ax[2].axhline(0, color="gray", lw=0.5)
    ax[2].set_ylabel("nats over unigram")
    ax[2].set_title(f"validation documents longer than {2 * near} tokens: gain over the no-context baseline "
                    f"(± 1 SE; penalty = near in long minus short windows)", fontsize=9)
    if lg:
        ax[2].legend(loc="upper left", fontsize=8)
    ax[3].plot([r["step"] for r in tr], [r["lr"] for r in tr], color=purple, label="learning rate")
    ax[3].set_ylabel("learning rate", color=purple)
    rate = ax[3].twinx()
    rate.plot([r["step"] for r in tr], [r["mask_rate"] for r in tr], color=orange, label="masking rate")
    rate.set_ylabel("masking rate", color=orange)
    ax[3].set_xlabel("step")
    for s in switches:
        for a in ax:
            a.axvline(s, color="gray", ls=":")
    fig.suptitle("Chinese ModernBERT pre-training (dotted: a stage begins)")
    save(fig, out_png)


def labels(configs, ignore=("seed",)):
    """Each run's label: its values of the settings in which the runs differ (the run's own
    directories and reporting intervals aside, and the seed: runs that differ only by their seed are
    seeds of one setting)."""
    skip = RUN_ONLY | set(ignore)
    keys = sorted({k for c in configs for k in c if k not in skip and len({json.dumps(d.get(k)) for d in configs}) > 1})
    return [", ".join(f"{k}={value(k, c.get(k))}" for k in keys) or "(same settings)" for c in configs]


def value(key, v):
    """A setting's value as a label shows it: a stage plan as its window lengths (256->2048)."""
    if key == "stages" and isinstance(v, list):
        return "->".join(str(s["seq_len"] if isinstance(s, dict) else s[1]) for s in v)
    return v


def read_runs(run_dirs):
    """{setting label: [log rows of each of its runs]}, settings in the order they are first named."""
    runs = []
    for d in run_dirs:
        rows = read_log(os.path.join(d, "log.jsonl"))
        if not rows or "config" not in rows[0]:
            raise Refused(f"{d}/log.jsonl: has no settings row (written by an older train.py?)")
        runs.append(rows)
    for rows in runs:  # logs of earlier versions lack the margins: they are differences of what they have
        for r in rows:
            if "val_loss" in r and "val_gain" not in r:
                r.update(val_gain=r["val_unigram_ce"] - r["val_loss"], val_margin=r["val_acc"] - r["val_top_acc"])
            if "far_loss" in r and "penalty" not in r:
                r.update({f"{g}_gain": r[f"{g}_unigram_ce"] - r[f"{g}_loss"] for g in ("near", "far", "short")},
                         penalty=r["near_loss"] - r["short_loss"])
    settings = {}
    for name, rows in zip(labels([rows[0]["config"] for rows in runs]), runs):
        settings.setdefault(name, []).append(rows)
    return settings


def spread(runs, key, rows_of):
    """x (tokens, millions), mean and sd over a setting's runs of `key` at the steps all runs logged,
    and the mean standard error within a run (what one run's error bar would be)."""
    import numpy as np
    per_run = [{r["step"]: r for r in rows_of(rows)} for rows in runs]
    steps = sorted(set.intersection(*(set(p) for p in per_run)))
    tokens = {r["step"]: r["tokens"] for r in runs[0] if "tokens" in r}
    v = np.array([[p[s][key] for s in steps] for p in per_run])
    se = np.array([[p[s].get(f"{key}_se", np.nan) for s in steps] for p in per_run])
    x = np.array([tokens.get(s, np.nan) for s in steps]) / 1e6
    sd = v.std(0, ddof=1) if len(runs) > 1 else np.full(len(steps), np.nan)
    return steps, x, v.mean(0), sd, se.mean(0)


def band(ax, x, mean, sd, se, colour, marker, label):
    """One setting: the mean over its seeds with a band of +- 1 sd over seeds; a single run: its
    points with error bars of +- 1 standard error. Markers always, so a run of one point shows."""
    import numpy as np
    if np.isfinite(sd).any():
        ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.2, lw=0)
        ax.plot(x, mean, marker=marker, color=colour, ms=4, label=label)
    else:
        ax.errorbar(x, mean, np.nan_to_num(se), marker=marker, color=colour, ms=4, capsize=2, label=label)


def compare(run_dirs, out_png):
    """Several runs in one picture, grouped by setting (runs that differ only by their seed are one
    setting, drawn as the mean over seeds with a band of +- 1 sd): validation gain and accuracy
    margin over the no-context baselines against tokens seen, and the long-document numbers at each
    stage switch and at the end (gain at near and far positions, the long-window penalty), each
    labelled with its own run's step."""
    import numpy as np
    settings = read_runs(run_dirs)
    fig, ax = figure(3)
    ax[1].sharex(ax[0])
    val = lambda rows: [r for r in rows if "val_loss" in r]  # noqa: E731
    events, width, drawn = [], 0.8 / len(settings), {}
    for i, (name, runs) in enumerate(settings.items()):
        colour, marker = COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]
        n = f"{name} ({len(runs)} seed{'s' * (len(runs) > 1)})"
        for a, key in ((ax[0], "val_gain"), (ax[1], "val_margin")):
            _, x, mean, sd, se = spread(runs, key, val)
            band(a, x, mean, sd, se, colour, marker, n)
        long = [[r for r in rows if "far_loss" in r] for rows in runs]
        for k in range(min(map(len, long))):  # the k-th long-document evaluation: a switch, or the end
            step = long[0][k]["step"]
            when = "end" if k == len(long[0]) - 1 else f"switch {k + 1}"
            drawn.setdefault(name, []).append((when, step))
            for metric, key in (("near", "near_gain"), ("far", "far_gain"), ("penalty", "penalty")):
                v = np.array([rows[k][key] for rows in long])
                err = v.std(ddof=1) if len(v) > 1 else long[0][k].get(f"{key}_se", 0)
                slot = f"{when}\n{metric}"
                if slot not in events:
                    events.append(slot)
                x = events.index(slot) + i * width
                ax[2].bar(x, v.mean(), width, yerr=err, color=colour, capsize=2, label=n if slot == events[0] else None)
                ax[2].annotate(f"{step}", (x, 0), fontsize=6, ha="center", va="top", textcoords="offset points",
                               xytext=(0, -2))
    ax[0].axhline(0, color="gray", lw=0.5)
    ax[0].set_ylabel("val gain (nats)")
    ax[0].set_title("masked positions only: loss margin over the train-unigram baseline on the same positions", fontsize=9)
    ax[1].axhline(0, color="gray", lw=0.5)
    ax[1].set_ylabel("val accuracy margin")
    ax[1].set_xlabel("tokens seen (millions)")
    ax[1].set_title("accuracy margin over always guessing the most frequent token, same positions", fontsize=9)
    ax[2].axhline(0, color="gray", lw=0.5)
    ax[2].set_ylabel("nats")
    if events:
        ax[2].set_xticks([k + 0.4 - width / 2 for k in range(len(events))], events, fontsize=7)
    ax[2].set_title("long documents: gain over unigram at near/far positions; penalty = near in long minus short "
                    "windows (0 = nothing lost); each bar's step below it", fontsize=9)
    for a in ax:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.suptitle("error bars and bands: ± 1 sd over seeds (± 1 standard error for a single run)", fontsize=9)
    save(fig, out_png)
    return drawn  # {setting: [(which long-document evaluation, its step)]}: what the bars show
