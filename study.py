"""
A study: train.py run for a list of settings x seeds, one run after another (seed by seed), then a
table that says which differences are beyond noise.

    python study.py config/study_ablations.py            # run what is not finished yet, then the table
    python study.py config/study_ablations.py --table    # only the table and the picture, from the runs so far
    python study.py config/study_ablations.py --dry_run  # what would run

A study file is plain assignments, like a train.py config: `settings` ({name: [train.py arguments]},
the first one is the baseline unless `baseline` names another), `seeds` (a list), `common` (train.py
arguments every run gets, e.g. --dtype=float32 so that every run computes in one dtype) and
`out_dir`. Run r of setting s trains into out_dir/<s>/seed<r>/. Runs never overlap (a lock file
refuses a second driver on the same out_dir: two runs side by side would share the CPU and each
other's timing). A run that finished (its ckpt.pt is at max_steps) is skipped, one that was killed is
resumed from its checkpoint (bitwise the run it would have been), so a killed study is simply
started again.

The table (out_dir/study.md and study.json) gives, per setting, the mean ± sd over its seeds of
each run's final figures, and for every other setting its difference to the baseline with a standard
error from the seeds' spread (sqrt(sd_a^2/n_a + sd_b^2/n_b)): "beyond noise" when the difference
exceeds 2 standard errors. Every run is scored on the same validation positions, so what separates
two settings is training noise, which the seeds measure. out_dir/study.png draws each setting's
seeds as one band (plot.py's picture).
"""
import os, re, signal, subprocess, sys

import torch

from support import stats
from support.errors import Refused, script
from support.files import write_bytes, write_json
from support.plots import compare, read_log
from support.settings import ArgParser

HERE = os.path.dirname(os.path.abspath(__file__))
# the final figures of a run: (log key, row kind, which row, how it is shown, scale)
FIGURES = [("val_gain", "val", -1, "val gain (nats)", 1), ("val_margin", "val", -1, "val acc margin (points)", 100),
           ("penalty", "long", 0, "penalty at the switch", 1), ("penalty", "long", -1, "penalty at the end", 1),
           ("far_near", "long", 0, "far - near at the switch", 1), ("far_near", "long", -1, "far - near at the end", 1),
           ("far_gain", "long", -1, "far gain at the end", 1)]


def read_study(path):
    """The study file's settings, seeds, common arguments, output folder and baseline."""
    scope = {}
    try:
        exec(open(path, encoding="utf-8").read(), {}, scope)
    except OSError as e:
        raise Refused(f"{path}: {e.strerror}")
    except Exception as e:
        raise Refused(f"{path}: not a study file ({type(e).__name__}: {e})")
    settings, seeds = scope.get("settings"), scope.get("seeds")
    if not isinstance(settings, dict) or not settings or not all(
            isinstance(a, list) and all(isinstance(x, str) for x in a) for a in settings.values()):
        raise Refused(f"{path}: `settings` must be a dict of {{name: [train.py arguments]}}")
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int and s >= 0 for s in seeds):
        raise Refused(f"{path}: `seeds` must be a list of integers >= 0")
    common, out_dir = scope.get("common", []), scope.get("out_dir")
    baseline = scope.get("baseline", next(iter(settings)))
    if baseline not in settings:
        raise Refused(f"{path}: baseline {baseline!r} is not one of the settings")
    if not isinstance(out_dir, str) or not out_dir:
        raise Refused(f"{path}: `out_dir` must name a folder")
    bad = [a for args in [common, *settings.values()] for a in args if a.split("=")[0] in ("--seed", "--out_dir", "--resume")]
    if bad:
        raise Refused(f"{path}: {bad[0]}: the study sets --seed, --out_dir and --resume itself")
    return settings, seeds, common, out_dir, baseline


def slug(name):
    return re.sub(r"[^0-9A-Za-z._-]+", "_", name).strip("_") or "setting"


def run_dir(out_dir, name, seed):
    return os.path.join(out_dir, slug(name), f"seed{seed}")


def progress(run):
    """(step of the run's checkpoint, max_steps), or None when it has none yet."""
    path = os.path.join(run, "ckpt.pt")
    if not os.path.isfile(path):
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return ckpt["step"], ckpt["config"]["max_steps"]
    except Exception:
        return None  # damaged: train.py --resume names what is wrong with it


class Lock:
    """out_dir/.study.lock holds the driver's process id; a second driver on the same study is refused
    while that process lives (a lock left by a killed driver is taken over)."""
    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, ".study.lock")

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            other = int(open(self.path).read().strip() or 0)
            os.kill(other, 0)
            raise Refused(f"{self.path}: another study driver (process {other}) runs this study; runs must not "
                          f"overlap")
        except (OSError, ValueError):
            pass  # no lock, or a stale one
        write_bytes(self.path, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        try:
            os.remove(self.path)
        except OSError:
            pass


def run_one(args, run):
    """One train.py run in a child process that dies with this one (so a killed study leaves no run
    behind to overlap with the next); its output goes to run/../seed<N>.out."""
    def die_with_parent():
        try:
            import ctypes
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: Linux only
        except (OSError, AttributeError):
            pass
    os.makedirs(os.path.dirname(run), exist_ok=True)
    with open(run + ".out", "a", encoding="utf-8") as out:
        return subprocess.call([sys.executable, os.path.join(HERE, "train.py"), *args], stdout=out,
                               stderr=subprocess.STDOUT, preexec_fn=die_with_parent if os.name == "posix" else None)


def figures_of(run):
    """A finished run's final figures ({label: value}), from its log."""
    rows = read_log(os.path.join(run, "log.jsonl"))
    kinds = {"val": [r for r in rows if "val_gain" in r], "long": [r for r in rows if "far_gain" in r]}
    out = {}
    for key, kind, which, label, scale in FIGURES:
        picked = kinds[kind]
        if kind == "long" and which == 0 and len(picked) < 2:
            continue  # one long-document evaluation only: the run has no switch
        if picked:
            out[label] = picked[which][key] * scale
    return out


def table(settings, seeds, out_dir, baseline):
    """The study's table as markdown, and its numbers."""
    finished = {name: [s for s in seeds if (p := progress(run_dir(out_dir, name, s))) and p[0] == p[1]]
                for name in settings}
    values = {name: [figures_of(run_dir(out_dir, name, s)) for s in finished[name]] for name in settings}
    labels = [label for _, _, _, label, _ in FIGURES]
    rows, numbers = [], {}
    head = "| setting | seeds | " + " | ".join(labels) + " |"
    rows += [f"Mean ± sd over seeds of each run's final figures (seeds {', '.join(map(str, seeds))}).", "", head,
             "|---|---|" + "---|" * len(labels)]
    for name in settings:
        cells, numbers[name] = [], {"seeds": finished[name]}
        for label in labels:
            v = [f[label] for f in values[name] if label in f]
            if not v:
                cells.append("–")
                continue
            m, sd = stats.mean_sd(v)
            numbers[name][label] = dict(mean=m, sd=sd, values=v)
            cells.append(f"{m:+.3f}" + (f" ± {sd:.3f}" if len(v) > 1 else ""))
        rows.append(f"| {name} | {len(finished[name])} | " + " | ".join(cells) + " |")
    rows += ["", f"Difference to `{baseline}` (± its standard error from the seeds' spread; beyond noise when "
             f"|difference| > 2 SE):", "", head.replace("| seeds ", ""), "|---|" + "---|" * len(labels)]
    for name in settings:
        if name == baseline:
            continue
        cells = []
        for label in labels:
            a, b = numbers[name].get(label), numbers[baseline].get(label)
            if not a or not b or len(a["values"]) < 2 or len(b["values"]) < 2:
                cells.append("–")
                continue
            d, se = stats.seed_difference(a["values"], b["values"])
            numbers[name][label].update(diff=d, diff_se=se, verdict=stats.verdict(d, se))
            cells.append(f"{d:+.3f} ± {se:.3f} ({'beyond' if stats.verdict(d, se) == 'beyond noise' else 'within'} noise)")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n", numbers


@script("study.py")
def main(argv=None):
    p = ArgParser("study.py", __doc__)
    p.add_argument("study", help="a study file (plain assignments: settings, seeds, common, out_dir)")
    p.add_argument("--table", action="store_true", help="only write the table and the picture of the runs so far")
    p.add_argument("--dry_run", action="store_true", help="print the runs and what each would do, run nothing")
    args = p.parse_args(argv)
    settings, seeds, common, out_dir, baseline = read_study(args.study)
    # Seed by seed: every setting's first seed before any second one, so that a study stopped early
    # still compares every setting (and each later seed adds a spread to all of them).
    plan = [(name, seed, run_dir(out_dir, name, seed)) for seed in seeds for name in settings]
    if args.dry_run:
        for name, seed, run in plan:
            state = progress(run)
            what = "new" if state is None else "finished" if state[0] == state[1] else f"resume at step {state[0]}"
            print(f"{run}: {what}: train.py {' '.join(common + settings[name])} --seed={seed}")
        return
    if not args.table:
        with Lock(out_dir):
            for i, (name, seed, run) in enumerate(plan, 1):
                state = progress(run)
                if state is not None and state[0] == state[1]:
                    continue
                print(f"[{i}/{len(plan)}] {run}: " + ("new run" if state is None else f"resuming at step {state[0]}"),
                      flush=True)
                rc = run_one([*common, *settings[name], f"--seed={seed}", f"--out_dir={run}",
                              f"--resume={state is not None}"], run)
                if rc != 0:
                    raise Refused(f"{run}: train.py exited with status {rc} (its output: {run}.out)")
    text, numbers = table(settings, seeds, out_dir, baseline)
    write_bytes(os.path.join(out_dir, "study.md"), text.encode("utf-8"))
    write_json(os.path.join(out_dir, "study.json"), dict(baseline=baseline, seeds=seeds, common=common,
                                                         settings=settings, figures=numbers))
    done = [run for _, _, run in plan if (p := progress(run)) and p[0] == p[1]]
    if done:
        compare(done, os.path.join(out_dir, "study.png"))
    print(text + f"wrote {out_dir}/study.md, study.json" + (", study.png" if done else ""))


if __name__ == "__main__":
    main()
