"""
How eval_clue.py reports: scores aggregated over seeds, zero-shot accuracies next to their
baseline, the markdown tables, and fine-tuned models kept on disk (--save). Nothing here fine-tunes
or scores.
"""
import os

import numpy as np

from .files import atomic_dir, copy_file, write_json

SMALL_DEV = 1000  # a dev set smaller than this, scored with one seed, gets a warning under the table


def save_model(model, task, data, seed, args, tok_path):
    """<save>/<task>/seed<seed>/: model.safetensors + config.json (save_pretrained), tokenizer.json and
    task.json (the model class and, for classifiers, the label list in output order). A model that
    exports (the whole masked-LM model, whose encoder the retrieval probe tunes) is saved as its
    export instead (save_hf): a folder that sentence-transformers and transformers load as it is,
    and that from_pretrained reads back exactly. Written under a temporary name, then renamed, so a
    directory that exists is complete."""
    final = os.path.join(args.save, task, f"seed{seed}")
    with atomic_dir(final) as tmp:
        if hasattr(model, "save_hf"):
            model.save_hf(tmp, tok_path)  # with tokenizer.json
        else:
            model.save_pretrained(tmp)
            copy_file(tok_path, os.path.join(tmp, "tokenizer.json"))
        write_json(os.path.join(tmp, "task.json"), dict(task=task, model_class=type(model).__name__, seed=seed,
                                                        labels=data.get("labels"), init=args.init))
    return final


def aggregate(per_seed, metric):
    """Mean and sample standard deviation (n - 1) over seeds of the final- and best-epoch scores."""
    def stats(values):
        values = np.array(values, dtype=np.float64)
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
    final, final_std = stats([r["final"] for r in per_seed])
    best, best_std = stats([r["best"] for r in per_seed])
    out = dict(metric=metric, seeds=[r["seed"] for r in per_seed], final=final, final_std=final_std, best=best,
               best_std=best_std, per_seed=per_seed)
    if "final_2" in per_seed[0]:
        out["final_2"], out["final_2_std"] = stats([r["final_2"] for r in per_seed])
    return out


def versus(hits, base):
    """Two methods' accuracies on the same items (0/1 per item), each with its standard error over the
    items, and their difference with its paired standard error (the items' differences' spread)."""
    se = lambda x: float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0  # noqa: E731
    hits, base = np.asarray(hits, dtype=np.float64), np.asarray(base, dtype=np.float64)
    return dict(acc=float(hits.mean()), acc_se=se(hits), no_context=float(base.mean()), no_context_se=se(base),
                gain=float((hits - base).mean()), gain_se=se(hits - base))


def cut_notes(what, max_len, shares):
    """The notes' words for texts cut to fit: shares is {split: (number cut, number in all)}."""
    return f"{what} to fit {max_len} tokens: " + ", ".join(
        f"{c:,} of {total:,} {split} ({100 * c / total:.1f}%)" for split, (c, total) in shares.items())


def pct(m, s=None, sign=""):
    return f"{100 * m:{sign}.2f}" + ("" if s is None else f" ± {100 * s:.2f}")


def markdown_table(results, args):
    """The fine-tuned scores, one row per task; the best-epoch column only when some task ran more than
    one epoch (else it repeats the final one). Then the zero-shot scores, if a task has one."""
    tuned = {task: r for task, r in results.items() if "per_seed" in r}
    epochs = any(len(s["per_epoch"]) > 1 for r in tuned.values() for s in r["per_seed"])
    rows = [f"CLUE dev results: {args.model_dir} ({'random init' if args.init == 'random' else 'pre-trained'}), "
            f"seeds from {args.seed}; dev scores are mean ± std over the seeds (std over n-1)", "",
            f"| task | metric | seeds | {'dev (final epoch) | dev (best epoch)' if epochs else 'dev'} | baseline | "
            f"{'final, per seed' if epochs else 'per seed'} | train / dev | time |", "|---" * (9 if epochs else 8) + "|"]
    warn = []
    for task, r in tuned.items():
        n = len(r["seeds"])
        std = lambda key: r[key] if n > 1 else None  # noqa: E731
        final = pct(r["final"], std("final_std")) + (f" / {pct(r['final_2'], std('final_2_std'))}" if "final_2" in r else "")
        if epochs:
            final += " | " + (pct(r["best"], std("best_std")) if len(r["per_seed"][0]["per_epoch"]) > 1 else "–")
        base, name = r["baseline"], r.get("baseline_name", "majority class")
        base = "–" if base is None else f"{name} {pct(base[0])} / {pct(base[1])}" if isinstance(base, list) \
            else f"{name} {pct(base)}"
        per_seed = ", ".join(pct(s["final"]) for s in r["per_seed"])
        rows.append(f"| {task} | {r['metric']} | {n} | {final} | {base} | {per_seed} | "
                    f"{r['n_train']:,} / {r['n_dev']:,} | {r['seconds']:.0f}s |")
        if n == 1 and r["n_dev"] < SMALL_DEV:
            warn.append(f"warning: {task} has {r['n_dev']} dev rows and ran with one seed; its score moves by "
                        f"several points between seeds (use --seeds 3)")
    rows = (rows if tuned else []) + ([""] + warn if warn else [])
    return "\n".join(rows + zero_shot_table(results, args)).strip()


def zero_shot_table(results, args):
    zs = {task: r["zero_shot"] for task, r in results.items() if "zero_shot" in r}
    if not zs:
        return []
    how = {"word": "its tokens masked together", "token": "each token masked in turn"}[next(iter(zs.values()))["scoring"]]
    rows = ["", f"Zero-shot: the {'randomly initialised' if args.init == 'random' else 'pre-trained'} masked LM fills "
                f"the blank, no fine-tuning (a candidate's score: the mean log-probability of {how}; "
                "± standard error over the items)", "",
            "| task | items | zero-shot | no context (passage removed) | context adds (paired) | chance | "
            "summed log-probability: zero-shot / no context | contexts cut |", "|---" * 8 + "|"]
    for task, z in zs.items():
        m, s = z["mean"], z["sum"]
        rows.append(f"| {task} | {z['items']:,} | {pct(m['acc'], m['acc_se'])} | {pct(m['no_context'], m['no_context_se'])} | "
                    f"{pct(m['gain'], m['gain_se'], '+')} | {pct(z['chance'])} | {pct(s['acc'])} / {pct(s['no_context'])} | "
                    f"{z['contexts_cut']:,} ({100 * z['contexts_cut'] / z['items']:.1f}%) |")
    return rows
