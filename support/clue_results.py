"""
How eval_clue.py reports: scores aggregated over seeds, the markdown table, and fine-tuned models
kept on disk (--save). Nothing here fine-tunes or scores.
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


def markdown_table(results, args):
    pct = lambda m, s=None: f"{100 * m:.2f}" + ("" if s is None else f" ± {100 * s:.2f}")  # noqa: E731
    rows = [f"CLUE dev results: {args.model_dir} ({'random init' if args.init == 'random' else 'pre-trained'}), "
            f"seeds from {args.seed}; dev scores are mean ± std over the seeds (std over n-1)", "",
            "| task | metric | seeds | dev (final epoch) | dev (best epoch) | baseline | final, per seed | train / dev | time |",
            "|---|---|---|---|---|---|---|---|---|"]
    warn = []
    for task, r in results.items():
        n = len(r["seeds"])
        std = lambda key: r[key] if n > 1 else None  # noqa: E731
        final = pct(r["final"], std("final_std")) + (f" / {pct(r['final_2'], std('final_2_std'))}" if "final_2" in r else "")
        base, name = r["baseline"], r.get("baseline_name", "majority class")
        base = "–" if base is None else f"{name} {pct(base[0])} / {pct(base[1])}" if isinstance(base, list) \
            else f"{name} {pct(base)}"
        per_seed = ", ".join(pct(s["final"]) for s in r["per_seed"])
        rows.append(f"| {task} | {r['metric']} | {n} | {final} | {pct(r['best'], std('best_std'))} | {base} | {per_seed} | "
                    f"{r['n_train']:,} / {r['n_dev']:,} | {r['seconds']:.0f}s |")
        if n == 1 and r["n_dev"] < SMALL_DEV:
            warn.append(f"warning: {task} has {r['n_dev']} dev rows and ran with one seed; its score moves by "
                        f"several points between seeds (use --seeds 3)")
    return "\n".join(rows + ([""] + warn if warn else []))
