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


def plot_run(log_path, out_png):
    """train.png: masked-only validation next to its no-context baselines; long documents (near and
    far positions in last-stage windows, the near positions again in first-stage windows: the
    long-window penalty); the schedules. Dotted verticals mark stage switches."""
    rows = read_log(log_path)
    tr = [r for r in rows if "loss" in r]
    ev = [r for r in rows if "val_loss" in r]
    lg = [r for r in rows if "far_loss" in r]
    switches = [b["step"] - 1 for a, b in zip(tr, tr[1:]) if b["stage"] != a["stage"]]
    near = tr[0]["seq_len"] if tr else 0
    fig, ax = figure(4, sharex=True)
    ax[0].plot([r["step"] for r in tr], [r["loss"] for r in tr], lw=0.5, color="lightgray", label="train loss (80/10/10)")
    ax[0].plot([r["step"] for r in ev], [r["val_loss"] for r in ev], "o-", label="val loss, masked positions only")
    ax[0].plot([r["step"] for r in ev], [r["val_unigram_ce"] for r in ev], ":", color="tab:orange",
               label="train-unigram cross-entropy, same positions (no context)")
    ax[0].set_ylabel("MLM loss (nats)")
    ax[0].legend(loc="upper right", fontsize=8)
    ax[1].plot([r["step"] for r in ev], [r["val_acc"] for r in ev], "s-", color="tab:green", label="val accuracy, masked positions")
    ax[1].plot([r["step"] for r in ev], [r["val_top_acc"] for r in ev], ":", color="tab:green",
               label="always the most frequent token, same positions")
    ax[1].set_ylabel("accuracy")
    ax[1].legend(loc="lower right", fontsize=8)
    steps = [r["step"] for r in lg]
    for key, color, label in [("near", "tab:blue", f"positions < {near}, long windows"),
                              ("far", "tab:red", f"positions >= {near}, long windows"),
                              ("short", "tab:cyan", f"positions < {near}, {near}-token windows")]:
        if lg and f"{key}_loss" in lg[0]:
            ax[2].plot(steps, [r[f"{key}_unigram_ce"] - r[f"{key}_loss"] for r in lg], "o-", color=color, label=label)
    ax[2].axhline(0, color="gray", lw=0.5)
    ax[2].set_ylabel("nats over unigram")
    ax[2].set_title(f"validation documents longer than {2 * near} tokens: gain over the no-context baseline "
                    f"(near: long minus short = the long-window penalty)", fontsize=9)
    if lg:
        ax[2].legend(loc="upper left", fontsize=8)
    ax[3].plot([r["step"] for r in tr], [r["lr"] for r in tr], color="tab:purple", label="learning rate")
    ax[3].set_ylabel("learning rate", color="tab:purple")
    rate = ax[3].twinx()
    rate.plot([r["step"] for r in tr], [r["mask_rate"] for r in tr], color="tab:brown", label="masking rate")
    rate.set_ylabel("masking rate", color="tab:brown")
    ax[3].set_xlabel("step")
    for s in switches:
        for a in ax:
            a.axvline(s, color="gray", ls=":")
    fig.suptitle("Chinese ModernBERT pre-training (dotted: a stage begins)")
    save(fig, out_png)


def labels(configs):
    """Each run's label: its values of the settings in which the runs differ (the run's own
    directories and reporting intervals aside)."""
    keys = sorted({k for c in configs for k in c if k not in RUN_ONLY and len({json.dumps(d.get(k)) for d in configs}) > 1})
    return [", ".join(f"{k}={c.get(k)}" for k in keys) or "(same settings)" for c in configs]


def compare(run_dirs, out_png):
    """Several runs in one picture: validation loss and accuracy against tokens seen, each next to
    its own no-context baseline (dotted), and the long-document numbers at the stage switch and at
    the end (gain over the unigram baseline, and the long-window penalty)."""
    runs = []
    for d in run_dirs:
        rows = read_log(os.path.join(d, "log.jsonl"))
        if not rows or "config" not in rows[0]:
            raise Refused(f"{d}/log.jsonl: has no settings row (written by an older train.py?)")
        runs.append(rows)
    names = labels([rows[0]["config"] for rows in runs])
    fig, ax = figure(3)
    ax[1].sharex(ax[0])
    width = 0.8 / len(runs)
    for i, (rows, name) in enumerate(zip(runs, names)):
        color = f"C{i}"
        tokens = {r["step"]: r["tokens"] for r in rows if "tokens" in r}
        ev = [r for r in rows if "val_loss" in r]
        x = [tokens[r["step"]] / 1e6 for r in ev]
        ax[0].plot(x, [r["val_loss"] for r in ev], "o-", color=color, label=name)
        ax[0].plot(x, [r["val_unigram_ce"] for r in ev], ":", color=color)
        ax[1].plot(x, [r["val_acc"] for r in ev], "s-", color=color, label=name)
        ax[1].plot(x, [r["val_top_acc"] for r in ev], ":", color=color)
        lg = [r for r in rows if "far_loss" in r and "short_loss" in r]
        bars = [(f"step {r['step']}\n{key}", r[f"{key}_unigram_ce"] - r[f"{key}_loss"]) for r in lg for key in ("near", "far")]
        bars += [(f"step {r['step']}\npenalty", r["near_loss"] - r["short_loss"]) for r in lg]
        ax[2].bar([k + i * width for k in range(len(bars))], [v for _, v in bars], width, color=color, label=name)
        if bars:
            ax[2].set_xticks([k + 0.4 - width / 2 for k in range(len(bars))], [b for b, _ in bars], fontsize=7)
    ax[0].set_ylabel("val loss (nats)")
    ax[0].set_title("masked positions only; dotted: the train-unigram cross-entropy on the same positions", fontsize=9)
    ax[1].set_ylabel("val accuracy")
    ax[1].set_xlabel("tokens seen (millions)")
    ax[1].set_title("dotted: always the most frequent token, same positions", fontsize=9)
    ax[2].axhline(0, color="gray", lw=0.5)
    ax[2].set_ylabel("nats")
    ax[2].set_title("long documents: gain over unigram at positions near/far; penalty = near in long minus "
                    "short windows (0 = nothing lost)", fontsize=9)
    for a in ax:
        a.legend(fontsize=8)
    save(fig, out_png)
