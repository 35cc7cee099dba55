"""
What a training run keeps in its output directory, and how it survives a kill, a full disk or a
foreign file:

    ckpt.pt             model, optimiser, step, settings, RNG: the state a resume continues from,
                        and the fingerprints of the tokenizer and of the dataset it continues on
    model.safetensors   the model folder (with config.json and tokenizer.json), rewritten with each
    config.json         checkpoint, always before ckpt.pt, so it is never older than ckpt.pt
    tokenizer.json
    log.jsonl           one JSON row per step and per evaluation; the first row says which code ran
    train.png           the curves
    tracker.json        with --tracker (trackers.py): the W&B run id, how far TensorBoard's events
    events.out.tfevents.*, wandb/   are complete; the tracker's own files

Every file is written by an atomic rename (files.py); ckpt.pt is read as data only (weights_only:
a crafted file cannot run code) and refused in one line when it is damaged, foreign or of another
model or tokenizer. Nothing here imports train.py: it passes its settings and checks in.
"""
import dataclasses, glob, json, os, tempfile

import torch
from tqdm import tqdm

from . import trackers
from .errors import Refused, why
from .files import atomic_path, copy_file, sha256

CKPT_FORMAT = 3  # the layout of ckpt.pt (3: the dataset fingerprint, the embedding's own optimiser group); older ones are refused
RUN_FILES = ["ckpt.pt", "model.safetensors", "config.json", "tokenizer.json", "log.jsonl", "train.png", "tracker.json"]
FROM_COMMAND_LINE = {"data_dir", "out_dir", "device", "resume"}  # never taken from a checkpoint


def check_out_dir(out, data_dir, resume, master=True):
    """The output directory is usable before any long work: it is not a dataset directory, it can be
    written, and a fresh run does not overwrite another run's checkpoint (nothing lost by a re-run).
    Temporary files a killed run left there are removed (by the process that writes them)."""
    ckpt_path = os.path.join(out, "ckpt.pt")
    if os.path.isdir(out) and os.path.isdir(data_dir) and os.path.samefile(out, data_dir):
        raise Refused(f"--out_dir={out} is the data directory; the run's files need a directory of their own")
    if os.path.exists(os.path.join(out, "meta.json")):
        raise Refused(f"--out_dir={out} holds a dataset (meta.json); the run's files need a directory of their own")
    if not resume and os.path.exists(ckpt_path):
        raise Refused(f"{ckpt_path} exists: continue that run with --resume=True, or use another --out_dir (or remove it)")
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.remove(probe)
        if master:
            for name in RUN_FILES:
                for stale in glob.glob(os.path.join(glob.escape(out), f".{name}.*.tmp")):
                    os.remove(stale)
    except OSError as e:
        raise Refused(f"--out_dir={out}: cannot write there ({why(e)})")


# ------------------------------------------------------------------------------------------
# The checkpoint

def load_checkpoint(cfg, explicit, check_settings):
    """Read ckpt.pt as data only and check that this train.py wrote it. Returns it and the run's
    settings: the checkpoint's, except those given now and the directories and device, which always
    come from the command line (a copied checkpoint must not send the outputs to the directory of the
    run it was copied from). `check_settings(cfg, where)` checks the result."""
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise Refused(f"--resume=True but {path} " + ("is empty" if os.path.isfile(path) else "does not exist"))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise Refused(f"{path}: not a checkpoint this train.py can read ({why(e)})")
    version = ckpt.get("format_version") if isinstance(ckpt, dict) else None
    if version != CKPT_FORMAT:
        raise Refused(f"{path}: checkpoint format {version}, written by another version of train.py (this one reads {CKPT_FORMAT})")
    names = {f.name for f in dataclasses.fields(cfg)}
    parts = ("config", "model_config", "model", "optimizer", "rng")
    fault = (next((f"lacks {k}" for k in (*parts, "step", "tokenizer_sha256", "dataset_fingerprint") if k not in ckpt), None)
             or next((f"its {k} is not a mapping" for k in parts if not isinstance(ckpt[k], dict)), None)
             or ("it has unknown settings" if set(ckpt["config"]) - names else None))
    if fault:
        raise Refused(f"{path}: damaged or written by another version of train.py ({fault})")
    trained_on = ckpt["config"].get("data_dir")
    if "data_dir" not in explicit and os.path.abspath(str(trained_on)) != os.path.abspath(cfg.data_dir):
        raise Refused(f"{path}: trained on --data_dir={trained_on}; name the data to resume on with --data_dir "
                      f"(directories are never taken from a checkpoint)")
    saved = {k: v for k, v in ckpt["config"].items() if k not in explicit | FROM_COMMAND_LINE}
    cfg = dataclasses.replace(cfg, **saved)
    check_settings(cfg, where=f"{path}: setting")
    return ckpt, cfg


def check_checkpoint_fits(ckpt, path, mcfg, meta):
    """Before the model is built: refuse a checkpoint of another model, of another tokenizer (its token
    ids would mean other text, although the vocabulary sizes may agree), or of other data (its batches
    are a function of (seed, step, row) over these very shards: other shards would not continue it)."""
    if ckpt["tokenizer_sha256"] != meta["tokenizer_sha256"]:
        raise Refused(f"{path}: trained with another tokenizer than the data directory's (tokenizer sha256 "
                      f"{str(ckpt['tokenizer_sha256'])[:12]}... vs {meta['tokenizer_sha256'][:12]}...): "
                      f"resume with its own --data_dir")
    if ckpt["dataset_fingerprint"] != meta["fingerprint"]:
        raise Refused(f"{path}: trained on another dataset (its fingerprint {str(ckpt['dataset_fingerprint'])[:12]}..., "
                      f"the data directory's {meta['fingerprint'][:12]}...: another shard list or other shards); "
                      f"resume on the data it was trained on, or start a new run in another --out_dir")
    own, theirs = dataclasses.asdict(mcfg), ckpt["model_config"]
    diff = [k for k in own if k not in ("attn_backend", "max_seq_len", "rope_theta_global") and theirs.get(k) != own[k]]
    if diff:
        raise Refused(f"{path}: a checkpoint of another model ({diff[0]}={theirs.get(diff[0])!r}, this run: "
                      f"{own[diff[0]]!r}); resume with its preset and settings")


def restore_checkpoint(ckpt, path, model, optimizer):
    """Put the checkpoint's state into the model, optimiser and RNG. Returns its step."""
    try:
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
        if set(missing) - {"decoder.weight"} or unexpected:  # the tied decoder weight is not stored
            raise ValueError(f"weights {', '.join((sorted(set(missing) - {'decoder.weight'}) + unexpected)[:2])}")
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        if type(ckpt["step"]) is not int or ckpt["step"] < 0:
            raise ValueError(f"step {ckpt['step']!r}")
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise Refused(f"{path}: damaged checkpoint ({why(e)})")
    return ckpt["step"]


MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json")


def export_model(cfg, model, meta, weights=True, tokenizer=True):
    """The model directory: tokenizer.json, model.safetensors and config.json (which records the
    tokenizer's sha256, so whoever loads the model can check the two belong together). Returns the
    sha256 of each of the three files."""
    if tokenizer:
        copy_file(os.path.join(cfg.data_dir, "tokenizer.json"), os.path.join(cfg.out_dir, "tokenizer.json"))
    if weights:
        model.save_pretrained(cfg.out_dir, extra_config=dict(tokenizer_sha256=meta["tokenizer_sha256"]))
    return {name: sha256(os.path.join(cfg.out_dir, name)) for name in MODEL_FILES}


def repair_model_files(cfg, model, meta, ckpt):
    """A resume rewrites only the model files that are not those written with ckpt.pt (a kill between
    the model files and ckpt.pt leaves them one checkpoint newer; a checkpoint copied alone has none).
    ckpt.pt records the sha256 of each file written with it, so the check reads the files but writes
    nothing when they match: a finished run resumes on a full disk. A checkpoint without the record
    (an older train.py) has every file rewritten."""
    recorded = ckpt.get("model_files") if isinstance(ckpt.get("model_files"), dict) else {}

    def stale(name):
        path = os.path.join(cfg.out_dir, name)
        return not (os.path.isfile(path) and recorded.get(name) == sha256(path))
    weights, tokenizer = stale("model.safetensors") or stale("config.json"), stale("tokenizer.json")
    if weights or tokenizer:
        export_model(cfg, model, meta, weights, tokenizer)
        names = [n for n, redo in zip(MODEL_FILES, (weights, weights, tokenizer)) if redo]
        print(f"resume: rewrote {', '.join(names)} from ckpt.pt of step {ckpt['step']} (not the files written with it)")


def save_checkpoint(cfg, model, optimizer, step, mcfg, meta, code):
    """One checkpoint = the model directory, then ckpt.pt, each file by an atomic rename. A kill in
    between leaves model files one checkpoint newer than ckpt.pt, never older, each of them whole
    and of the same step: nothing scores stale weights, and --resume rewrites the model files from
    ckpt.pt before training on (to bitwise the same weights): ckpt.pt records the sha256 of the files
    written with it (repair_model_files). The run's tracker, if any, is flushed before ckpt.pt. A
    full disk or a read-only directory is one line; the temporary file is removed and the previous
    ckpt.pt stays as it was."""
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    state = dict(format_version=CKPT_FORMAT, model=model.state_dict_clean(), optimizer=optimizer.state_dict(),
                 step=step, config=dataclasses.asdict(cfg), model_config=dataclasses.asdict(mcfg),
                 tokenizer_sha256=meta["tokenizer_sha256"], dataset_fingerprint=meta["fingerprint"], code=code,
                 rng=dict(torch=torch.get_rng_state(),
                          cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None))
    try:
        state["model_files"] = export_model(cfg, model, meta)
        tracker = _TRACKERS.get(os.path.join(cfg.out_dir, "log.jsonl"))
        if tracker is not None:
            tracker.checkpoint(cfg.out_dir, step)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
    except Exception as e:
        raise Refused(f"{cfg.out_dir}: cannot write the checkpoint of step {step} ({why(e)}); "
                      f"{path} still holds the previous one")


# ------------------------------------------------------------------------------------------
# The log and what the run prints

def rewrite_log(path, step):
    """Keep log.jsonl up to `step` (None: start it empty), by an atomic rewrite, so a resumed run's
    log reads as one run and a kill mid-rewrite leaves the old log; a log that already ends there
    is left as it is (nothing written: a finished run resumes on a full disk). A torn last line (a
    kill or a full disk mid-append) is dropped; a damaged line elsewhere is reported. Returns the
    rows kept."""
    kept, rows, text = [], [], None
    if step is not None and os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        lines = text.split("\n")
        for i, line in enumerate(lines):
            try:
                row = json.loads(line)
                if not (isinstance(row, dict) and type(row.get("step")) is int):
                    raise ValueError
            except ValueError:
                if i >= len(lines) - 2 and not any(lines[i + 1:]):
                    break  # the torn (or empty) end of the file
                raise Refused(f"{path}: line {i + 1} is not a log row (damaged; remove the line or the file)")
            if row["step"] <= step:
                kept.append(line + "\n")
                rows.append(row)
    if "".join(kept) != text:
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
    return rows


_TRACKERS = {}  # log.jsonl's path -> the tracker that receives its rows (trackers.py), on the master process


def append_log(path, row):
    """One row at the end of log.jsonl, and the same row to the run's tracker, if it has one."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise Refused(f"{path}: cannot append ({why(e)}); resume from the last checkpoint with --resume=True")
    if path in _TRACKERS:
        _TRACKERS[path].log(row)


def close_log(path):
    """The end of a run: its tracker, if any, is flushed and closed."""
    tracker = _TRACKERS.pop(path, None)
    if tracker is not None:
        tracker.close()


def describe(r, what):
    """One line: a validation score next to its no-context baselines on the same positions, with the
    standard errors of the margins (documents as the unit: support/stats.py)."""
    return (f"{what}: loss {r['loss']:.4f} vs train-unigram {r['unigram_ce']:.4f} ({r['gain']:+.3f} ± "
            f"{r['gain_se']:.3f} nats of context), acc {r['acc']:.2%} vs most frequent token {r['top_acc']:.2%} "
            f"({100 * r['margin']:+.2f} ± {100 * r['margin_se']:.2f} points), {r['n']:,} positions in "
            f"{r['docs']:,} documents")


def long_labels(near, longest):
    return {"near": f"long documents in {longest}-token windows, positions < {near}",
            "far": f"long documents in {longest}-token windows, positions >= {near}",
            "short": f"the same positions < {near} in {near}-token windows"}


def penalty(scores):
    """The long-window penalty and far - near (train.long_documents) in one line."""
    return (f"long-window penalty {scores['penalty']:+.3f} ± {scores['penalty_se']:.3f} nats (the same "
            f"{scores['short']['n']:,} positions in the long vs the short windows; 0 = nothing lost); far - near "
            f"{scores['far_near']:+.3f} ± {scores['far_near_se']:.3f} nats of gain over the unigram baseline")


def flat(prefix, r):
    return {f"{prefix}_{k}": round(v, 6) if isinstance(v, float) else v for k, v in r.items()}


def log_val(path, step, r, near):
    """Masked-only validation: one log row (keys val_<score>) and one printed line."""
    append_log(path, dict(step=step, **flat("val", r)))
    tqdm.write(f"step {step}: {describe(r, f'val, masked positions only ({near}-token windows)')}")


def log_long(path, step, scores, near, longest):
    """The long-document scores: one log row (near_*, far_*, short_*, penalty, far_near, with their
    standard errors) and their lines."""
    groups = ("near", "far", "short")
    extra = {k: round(v, 6) for k, v in scores.items() if k not in groups}
    append_log(path, dict(step=step, long_seq_len=longest, **{k: v for g in groups for k, v in flat(g, scores[g]).items()},
                          **extra))
    for g in groups:
        tqdm.write(f"step {step}: {describe(scores[g], long_labels(near, longest)[g])}")
    tqdm.write(f"step {step}: {penalty(scores)}")


def print_plan(plan, grad_accum, world):
    for i, st in enumerate(plan):
        share = f" ({st.batch_size // world} per process)" if world > 1 else ""
        print(f"stage {i + 1}: steps {st.first}-{st.end}, {st.batch_size} x {st.seq_len} tokens{share} x {grad_accum} "
              f"micro-step(s) = {st.batch_size * st.seq_len * grad_accum:,} tokens per step, global RoPE theta "
              f"{st.rope_theta:g}")


def settings_row(cfg):
    """The settings that define how a run trains (not where its files are, nor how it reports; the
    checkpoint records which data it trained on)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in ("data_dir", "out_dir", "resume", "progress", "demo", "tracker")}


def start_log(path, step, code, config, tracker=""):
    """A fresh run starts log.jsonl with a row saying which code ran with which settings (plot.py
    labels runs by how their settings differ); a resumed run keeps the rows up to its checkpoint's
    step (rewrite_log). With a tracker (trackers.py), the rows the log holds and every row appended
    later also go there."""
    rows = rewrite_log(path, step)
    if step is None:
        trackers.forget(os.path.dirname(path))
        rows = [dict(step=0, code=code, config=config)]
        append_log(path, rows[0])
    if tracker:
        _TRACKERS[path] = trackers.start(tracker, os.path.dirname(path), rows, step)


def print_summary(step, tokens, seconds, results, long_results, near, longest, out_dir):
    print(f"done: {step} steps, {tokens:,} tokens in {seconds / 60:.1f} min ({tokens / max(seconds, 1e-9):,.0f} "
          f"tokens/s this session)")
    if results:
        print("  " + describe(results, f"final val, masked positions only ({near}-token windows)"))
    for g in ("near", "far", "short") if long_results else ():
        print("  " + describe(long_results[g], "final " + long_labels(near, longest)[g]))
    if long_results:
        print("  final " + penalty(long_results))
    print(f"  wrote {out_dir}/: log.jsonl, train.png, ckpt.pt, model.safetensors, config.json, tokenizer.json")
