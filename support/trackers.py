"""
Trackers: a run's log.jsonl sent where long runs are watched, TensorBoard or Weights & Biases
(train.py --tracker=tensorboard | wandb; the default "" sends nothing and imports nothing).

What is sent is log.jsonl itself, row by row, as run_files.append_log writes it, so the two cannot
drift: every numeric field of every row (booleans as 0/1) at the row's `step`; the training rows
carry `tokens`, the tokens seen after that step. The first row (the settings and the code version)
becomes TensorBoard text at step 0 and W&B's run config. A tracker that is asked for but is not
installed is refused with the settings (train_rules); one that cannot start (W&B not logged in) is
refused when it starts, before the first step; either is one line. Only the master process logs.

A resumed run continues the same curves, every step exactly once; log.jsonl holds the truth (the
rows up to the checkpoint, run_files.rewrite_log) and tracker.json in the output directory what
each tracker holds of it. A fresh run forgets tracker.json.

  tensorboard  event files in the output directory. Before each ckpt.pt is written the events are
               flushed and tracker.json records the step up to which they are complete. A resume
               from a checkpoint they cover opens its writer with purge_step = that step + 1:
               TensorBoard then drops every event of the earlier files from that step on (what
               the killed run wrote after its checkpoint; the resume recomputes those steps bitwise,
               only tok_s differs). Otherwise (a fresh run; a resume of a run that had no tracker,
               or another one) purge_step is 0 and log.jsonl's rows are replayed: the events
               restart whole.
  wandb        one W&B run per output directory, its id kept in tracker.json and resumed
               (resume="allow"). Offline (WANDB_MODE=offline) W&B does not resume: each start
               writes a new directory under <out_dir>/wandb whose step counter starts at 0, and
               nothing merges the directories of one id (syncing a later one over an earlier one is
               reported to replace its history). So every start replays log.jsonl's rows: the
               newest directory holds the whole run, every step once (`wandb sync
               <out_dir>/wandb/latest-run`). Online, W&B knows what it holds: after a resume,
               run.step is the step after its last, and rows below it are not sent again (W&B would
               drop them with a warning; it keeps the killed run's values, equal but for tok_s).
"""
import atexit, json, os, secrets

from .errors import Refused, why
from .files import write_json

KINDS = ("", "tensorboard", "wandb")
STATE = "tracker.json"  # in the output directory: the W&B run id, how far TensorBoard's events are complete


def installed(kind):
    """Whether the package of a tracker imports (imported only here, only when asked for)."""
    if not kind:
        return True
    try:
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401 (needs the tensorboard package)
        else:
            import wandb  # noqa: F401
        return True
    except ImportError:
        return False


def scalars(row):
    """The numbers of a log row, by name: what a tracker shows of it."""
    return {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))}


def read_state(out_dir):
    try:
        with open(os.path.join(out_dir, STATE), encoding="utf-8") as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}  # none yet, or damaged: the tracker starts its curves afresh (nothing is assumed)


def write_state(out_dir, **changes):
    write_json(os.path.join(out_dir, STATE), {**read_state(out_dir), **changes})


def forget(out_dir):
    """A fresh run in this directory: what tracker.json says belongs to an earlier run."""
    try:
        os.remove(os.path.join(out_dir, STATE))
    except FileNotFoundError:
        pass


def start(kind, out_dir, rows, step):
    """The tracker of a run, started; `rows` are the rows log.jsonl holds now, `step` the
    checkpoint's step for a resume (None for a fresh run). A tracker that cannot start is one line."""
    try:
        tracker = (TensorBoard if kind == "tensorboard" else WandB)(out_dir, rows, step)
    except Refused:
        raise
    except Exception as e:
        hint = " (`wandb login`, or WANDB_MODE=offline to log without a network)" if kind == "wandb" else ""
        raise Refused(f"--tracker={kind}: cannot start ({why(e)}){hint}")
    atexit.register(tracker.close)  # a run that stops early (a refusal) still closes it
    return tracker


class Tracker:
    kind = ""

    def log(self, row):
        try:
            self.send(row)
        except Exception as e:
            raise Refused(f"--tracker={self.kind}: cannot log step {row.get('step')} ({why(e)}); "
                          f"resume from the last checkpoint with --resume=True")

    def checkpoint(self, out_dir, step):
        """Called before ckpt.pt of `step` is written."""

    def close(self):
        pass


class TensorBoard(Tracker):
    kind = "tensorboard"

    def __init__(self, out_dir, rows, step):
        from torch.utils.tensorboard import SummaryWriter
        complete = read_state(out_dir).get("tensorboard_step")
        covered = step is not None and isinstance(complete, int) and complete >= step
        purge = step + 1 if covered else 0
        self.writer = SummaryWriter(out_dir, purge_step=purge)
        for row in rows:
            if row["step"] >= purge:
                self.send(row)

    def send(self, row):
        if "config" in row:  # the first row: which code ran with which settings
            for tag in ("config", "code"):
                text = json.dumps(row[tag], indent=1, ensure_ascii=False)
                self.writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), row["step"])
        for name, value in scalars(row).items():
            self.writer.add_scalar(name, value, row["step"])

    def checkpoint(self, out_dir, step):
        self.writer.flush()  # on disk before ckpt.pt: a resume from it may purge everything after it
        write_state(out_dir, tensorboard_step=step)

    def close(self):
        self.writer.close()


class WandB(Tracker):
    kind = "wandb"

    def __init__(self, out_dir, rows, step):
        import wandb
        run_id = read_state(out_dir).get("wandb_run_id") if step is not None else None
        if not run_id:
            run_id = secrets.token_hex(4)  # what W&B's own ids look like: 8 characters of [0-9a-z]
            write_state(out_dir, wandb_run_id=run_id)
        first = rows[0] if rows and "config" in rows[0] else {}  # the settings row (a copied checkpoint has no log)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "cmbert",
                              name=os.path.basename(os.path.abspath(out_dir)), id=run_id, resume="allow",
                              dir=out_dir, config={**first.get("config", {}), "code": first.get("code")})
        self.known = self.run.step  # online: the steps W&B already holds lie below it; offline: 0
        self.closed = False
        for row in rows:
            self.send(row)

    def send(self, row):
        values = scalars(row)
        if values and row["step"] >= self.known:
            self.run.log(values, step=row["step"])

    def close(self):
        if not self.closed:
            self.closed = True
            self.run.finish()
