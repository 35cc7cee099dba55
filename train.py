"""
Pre-train Chinese ModernBERT with the paper's recipe: whole-word masking with a 15 -> 30 -> 15%
curriculum, a damped-cosine learning rate, and a 1,024 -> 8,192 sequence-length stage switch.

    python train.py                                   # the tiny CPU demo (config/tiny.py), ~8 minutes
    python train.py config/base.py --max_steps=2000   # a config file, then overrides
    torchrun --standalone --nproc_per_node=8 train.py config/paper_large.py
    python train.py --help                            # every setting with its default
"""
import ast, dataclasses, glob, inspect, json, math, os, sys, tempfile, time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from cmbert import (PRESETS, CMBert, atomic_path, compile_seconds, config_from_preset, copy_file, device_peak_flops,
                    flash_attn_available, resolve_dtype)
from prepare import FORMAT_VERSION as DATA_FORMAT, sha256


@dataclass
class TrainConfig:
    # data and output
    data_dir: str = "data/default"   # written by prepare.py
    out_dir: str = "out"
    # model (a preset of cmbert.py, plus the knobs a student may want to turn)
    preset: str = "tiny"
    norm: str = "rmsnorm"            # the paper's RMSNorm; "layernorm" = ModernBERT exactly (exports without remote code)
    attn_backend: str = "auto"       # auto | flash | torch
    compile: bool = torch.cuda.is_available()  # torch.compile: on where there is a GPU (1.4-1.7x on an H100), off on CPU (compiling takes minutes there)
    dtype: str = "auto"              # autocast: auto = bf16 on CUDA and on CPUs with native bf16 (AMX/AVX512-BF16), else fp32; or float32 | bfloat16
    # The recipe's stages, one plain record each, looked up by step: `start` is where the stage
    # begins (a fraction of max_steps; the first starts at 0), `seq_len` its window length,
    # `batch_size` its sequences per micro-step and process, `rope_theta` the global layers' RoPE
    # theta (local layers keep rope_theta_local). Tokens per step are batch_size * seq_len *
    # grad_accum * processes; they change at a switch unless the batch sizes keep them constant.
    # Adding a stage is adding a record here (or in a config file).
    stages: list = field(default_factory=lambda: [
        dict(start=0.0, seq_len=1024, batch_size=2, rope_theta=80000.0),
        dict(start=0.982, seq_len=8192, batch_size=1, rope_theta=80000.0)])
    max_steps: int = 448
    grad_accum: int = 1              # micro-steps per optimiser step
    # whole-word masking curriculum: linear min -> max over mask_warmup, then back to min at the end
    mask_min: float = 0.15
    mask_max: float = 0.30           # = mask_min for a constant rate
    mask_warmup: float = 0.05        # fraction of max_steps (the paper's S_w is unconfirmed)
    # damped-cosine learning rate (docs/method.md §4) after a linear warm-up
    lr_max: float = 2e-3
    lr_min: float = 2e-4
    warmup_steps: int = 50
    lr_cycles: int = 2               # N: cosine half-periods are 2N - 1, so it ends in a valley
    lr_damping: float = 0.5          # gamma: the peaks decay linearly to gamma * lr_max
    # optimiser
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0           # 0 = off
    max_bad_steps: int = 5           # consecutive non-finite steps before the run stops
    # evaluation, logging, checkpoints
    eval_interval: int = 100
    eval_windows: int = 16           # validation windows of the first stage's length, spread over val.bin
    ckpt_interval: int = 100
    resume: bool = False
    seed: int = 1337
    device: str = "auto"             # auto = cuda, then mps, then cpu
    demo: bool = True                # fill-mask examples at the end
    progress: bool = True            # tqdm bar


def parse_args(argv):
    """Config files (config/*.py, plain assignments), then --name=value (or --name value) overrides,
    typed by the dataclass. Returns (config, the names set explicitly)."""
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    values = {}

    def put(name, value, where):
        if name not in types:
            fail(f"unknown setting {name!r} in {where} (see --help)")
        typ = types[name]
        if typ is str:
            value = str(value)
        elif typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not typ:
            fail(f"{where}: {name} must be {typ.__name__}, got {value!r}")
        values[name] = value

    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            src = inspect.getsource(TrainConfig).split("\n", 2)[2]
            print(__doc__.strip() + "\n\nSettings and their defaults (override with --name=value or --name value; "
                  "booleans True/False):\n" + src)
            sys.exit(0)
        if arg.startswith("--"):
            name, eq, raw = arg[2:].partition("=")
            if not eq:  # --name value: the value is the next argument
                if not args or args[0].startswith("--"):
                    fail(f"{arg}: no value (write --{name}=value or --{name} value)")
                raw = args.pop(0)
                arg = f"{arg} {raw}"
            try:
                value = raw if types.get(name) is str else ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
            put(name, value, arg)
        elif arg.endswith(".py") and os.path.exists(arg):
            scope = {}
            exec(open(arg).read(), {}, scope)
            for name, value in scope.items():
                if not name.startswith("_"):
                    put(name, value, arg)
        else:
            fail(f"{arg!r} is neither a config file nor --name=value / --name value")
    return TrainConfig(**values), set(values)


# ------------------------------------------------------------------------------------------
# Refusing early: bad settings, a foreign checkpoint, an unusable directory are one line, before any work

def fail(msg):
    """Every refusal and fault ends here: one line on stderr, exit status 1, no traceback."""
    raise SystemExit(f"train.py: error: {msg}")


def why(e):
    """The cause of an error in a few words (a library's write error often wraps the OSError)."""
    cause = e
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return cause.strerror or str(cause)
    return (str(e).strip().split(". ")[0].splitlines() or [type(e).__name__])[0]  # the first sentence


finite = lambda lo, hi: lambda v, c: math.isfinite(v) and lo <= v <= hi
at_least = lambda lo: lambda v, c: v >= lo
RULES = [  # (setting, test of its value, the allowed values in words)
    ("preset", lambda v, c: v in PRESETS, f"one of {', '.join(PRESETS)}"),
    ("norm", lambda v, c: v in ("rmsnorm", "layernorm"), "rmsnorm or layernorm"),
    ("attn_backend", lambda v, c: v in ("auto", "flash", "torch"), "auto, flash or torch"),
    ("attn_backend", lambda v, c: v != "flash" or (flash_attn_available() and c.device.startswith(("cuda", "auto"))
                                                   and torch.cuda.is_available()),
     "auto or torch here (flash needs flash-attn installed and a CUDA device)"),
    ("dtype", lambda v, c: v in ("auto", "float32", "bfloat16"), "auto, float32 or bfloat16"),
    ("device", lambda v, c: v in ("auto", "cpu", "mps") or v == "cuda" or v.startswith("cuda:") and v[5:].isdigit(),
     "auto, cpu, cuda, cuda:N or mps"),
    ("device", lambda v, c: not v.startswith("cuda") or torch.cuda.device_count() > int(v[5:] or 0),
     "a CUDA device this machine has (torch sees none or fewer)"),
    ("device", lambda v, c: v != "mps" or torch.backends.mps.is_available(), "a device this machine has (torch sees no mps)"),
    ("max_steps", at_least(1), ">= 1"),
    ("stages", lambda v, c: stages_ok(c), "a list of (start, seq_len, batch_size, rope_theta) records: starts "
     "from 0 and increasing below 1, seq_len >= 2, batch_size >= 1, rope_theta > 0"),
    ("grad_accum", at_least(1), ">= 1"),
    ("mask_min", finite(1e-9, 1), "in (0, 1]"),
    ("mask_max", lambda v, c: math.isfinite(v) and c.mask_min <= v <= 1, "in [mask_min, 1]"),
    ("mask_warmup", finite(0, 1), "in [0, 1] (a fraction of max_steps)"),
    ("lr_max", finite(1e-30, math.inf), "> 0"),
    ("lr_min", lambda v, c: math.isfinite(v) and 0 <= v <= c.lr_max, "in [0, lr_max]"),
    ("warmup_steps", at_least(0), ">= 0"),
    ("lr_cycles", at_least(1), ">= 1"),
    ("lr_damping", finite(0, 1), "in [0, 1]"),
    ("weight_decay", finite(0, math.inf), ">= 0"),
    ("beta1", lambda v, c: 0 <= v < 1, "in [0, 1)"),
    ("beta2", lambda v, c: 0 <= v < 1, "in [0, 1)"),
    ("grad_clip", finite(0, math.inf), ">= 0 (0 = off)"),
    ("max_bad_steps", at_least(1), ">= 1"),
    ("eval_interval", at_least(1), ">= 1"),
    ("eval_windows", at_least(1), ">= 1"),
    ("ckpt_interval", at_least(1), ">= 1"),
    ("seed", lambda v, c: 0 <= v < 2**63, "in [0, 2^63)"),
    ("data_dir", lambda v, c: v != "", "a directory"),
    ("out_dir", lambda v, c: v != "", "a directory"),
]


def stages_ok(cfg):
    try:
        return all(type(st.seq_len) is int and st.seq_len >= 2 and type(st.batch_size) is int and st.batch_size >= 1
                   and isinstance(st.rope_theta, (int, float)) and st.rope_theta > 0 for st in stages(cfg))
    except (TypeError, ValueError):
        return False


def validate_config(cfg, where="setting"):
    """Every setting against RULES (types first, so a checkpoint's settings are checked as well)."""
    for f in dataclasses.fields(TrainConfig):
        if type(getattr(cfg, f.name)) is not f.type:
            fail(f"{where} {f.name}={getattr(cfg, f.name)!r}: must be {f.type.__name__}")
    for name, ok, allowed in RULES:
        if not ok(getattr(cfg, name), cfg):
            fail(f"{where} {name}={getattr(cfg, name)!r}: must be {allowed}")


def check_environment(cfg):
    """The output directory is usable before any long work: it is not a dataset directory, it can be
    written, and a fresh run does not overwrite another run's checkpoint (nothing lost by a re-run).
    Temporary files a killed run left there are removed."""
    out, ckpt_path = cfg.out_dir, os.path.join(cfg.out_dir, "ckpt.pt")
    if os.path.isdir(out) and os.path.isdir(cfg.data_dir) and os.path.samefile(out, cfg.data_dir):
        fail(f"--out_dir={out} is the data directory; the run's files need a directory of their own")
    if os.path.exists(os.path.join(out, "meta.json")):
        fail(f"--out_dir={out} holds a dataset (meta.json); the run's files need a directory of their own")
    if not cfg.resume and os.path.exists(ckpt_path):
        fail(f"{ckpt_path} exists: continue that run with --resume=True, or use another --out_dir (or remove it)")
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.remove(probe)
        if int(os.environ.get("RANK", 0)) == 0:  # only the process that writes them
            for name in RUN_FILES:
                for stale in glob.glob(os.path.join(glob.escape(out), f".{name}.*.tmp")):
                    os.remove(stale)
    except OSError as e:
        fail(f"--out_dir={out}: cannot write there ({why(e)})")


# ------------------------------------------------------------------------------------------
# Schedules: masking rate, learning rate, stage (all functions of the step alone)

def mask_rate(step, cfg):
    warm = max(1, round(cfg.mask_warmup * cfg.max_steps))
    if step <= warm:
        return cfg.mask_min + (cfg.mask_max - cfg.mask_min) * step / warm
    return cfg.mask_max - (cfg.mask_max - cfg.mask_min) * (step - warm) / max(1, cfg.max_steps - warm)


def learning_rate(step, cfg):
    """Linear warm-up, then eta(p) = (P + V)/2 + (P - V)/2 cos(pi (2N - 1) p) with decaying peaks
    P(p) = lr_max (1 - (1 - gamma) p) and valleys V(p) = lr_max/2 (1 - p) + lr_min p (docs/method.md §4)."""
    if step < cfg.warmup_steps:
        return cfg.lr_max * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    peak = cfg.lr_max * (1 - (1 - cfg.lr_damping) * p)
    valley = cfg.lr_max / 2 * (1 - p) + cfg.lr_min * p
    return (peak + valley) / 2 + (peak - valley) / 2 * math.cos(math.pi * (2 * cfg.lr_cycles - 1) * p)


@dataclass
class Stage:
    start: float        # fraction of max_steps where the stage begins
    seq_len: int        # tokens per window
    batch_size: int     # windows per micro-step and process
    rope_theta: float   # RoPE theta of the global layers during this stage


def stages(cfg):
    """The stage records of the config, checked: the first starts at 0, starts increase. A record is
    a dict or a tuple in field order: --stages="[(0, 1024, 2, 8e4), (0.9, 8192, 1, 1.6e5)]"."""
    out = [Stage(**s) if isinstance(s, dict) else Stage(*s) for s in cfg.stages]
    if not out or out[0].start != 0 or any(a.start >= b.start for a, b in zip(out, out[1:])) or out[-1].start >= 1:
        raise ValueError(f"stages: starts must begin at 0 and increase below 1, got {[s.start for s in out]}")
    return out


def stage_at(step, cfg):
    """(index, Stage) of the stage that trains at this step."""
    plan = stages(cfg)
    i = sum(step >= round(s.start * cfg.max_steps) for s in plan) - 1
    return i, plan[i]


def step_tokens(step, cfg, world):
    """Tokens seen after `step` optimiser steps (a function of the step, so resumed logs match)."""
    st = stages(cfg)
    starts = [round(s.start * cfg.max_steps) for s in st] + [cfg.max_steps]
    return sum(max(0, min(step, b) - a) * s.batch_size * s.seq_len for s, a, b in zip(st, starts, starts[1:])) \
        * cfg.grad_accum * world


# ------------------------------------------------------------------------------------------
# Data: memory-mapped token stream, packed windows, whole-word masking

META_KEYS = ["format_version", "vocab_size", "tokenizer_size", "pad_id", "cls_id", "sep_id", "mask_id",
             "train_tokens", "val_tokens", "tokenizer_sha256"]


def load_data(data_dir):
    """meta.json, the token streams and tokenizer.json of a prepare.py directory, each checked first:
    a missing, corrupt or foreign file is one line naming it, never a traceback later on."""
    meta_path, tok_path = os.path.join(data_dir, "meta.json"), os.path.join(data_dir, "tokenizer.json")
    if not os.path.exists(meta_path):
        fail(f"{data_dir}: no meta.json (run prepare.py; a directory without it is incomplete)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (ValueError, OSError) as e:
        fail(f"{meta_path}: not readable JSON ({why(e)})")
    missing = [k for k in META_KEYS if k not in meta] if isinstance(meta, dict) else META_KEYS
    if missing:
        fail(f"{meta_path}: lacks {', '.join(missing)} (not written by prepare.py, or damaged)")
    if meta["format_version"] != DATA_FORMAT:
        fail(f"{meta_path}: format_version {meta['format_version']!r}, but this train.py reads {DATA_FORMAT} "
             f"(run this version's prepare.py)")
    bad = [k for k in META_KEYS[1:-1] if type(meta[k]) is not int or meta[k] < 0]
    if bad or not meta["tokenizer_size"] <= meta["vocab_size"] <= 65536:
        fail(f"{meta_path}: bad value of {(bad or ['tokenizer_size/vocab_size'])[0]} (damaged?)")
    if not os.path.exists(tok_path):
        fail(f"{tok_path}: missing (run prepare.py; the run copies it next to the model)")
    if sha256(tok_path) != meta["tokenizer_sha256"]:
        fail(f"{tok_path}: not the tokenizer meta.json names (sha256 {sha256(tok_path)[:12]}..., meta.json: "
             f"{str(meta['tokenizer_sha256'])[:12]}...); the token ids would mean other text. Run prepare.py again")
    data = {}
    for split in ("train", "val"):
        for name, size in ((f"{split}.bin", 2), (f"{split}.words.bin", 1)):
            path = os.path.join(data_dir, name)
            n = os.path.getsize(path) if os.path.isfile(path) else -1
            if n <= 0 or n % size:
                fail(f"{path}: " + ("missing" if n < 0 else "empty" if n == 0 else
                                    f"{n} bytes, not a whole number of {size}-byte entries (truncated?)"))
        ids = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype="<u2", mode="r")
        flags = np.memmap(os.path.join(data_dir, f"{split}.words.bin"), dtype=np.uint8, mode="r")
        if len(ids) != len(flags) or len(ids) != meta[f"{split}_tokens"]:
            fail(f"{data_dir}: {split}.bin / {split}.words.bin do not match meta.json")
        if ids.max() >= meta["tokenizer_size"]:
            i = int(np.argmax(ids >= meta["tokenizer_size"]))
            fail(f"{data_dir}/{split}.bin: token {i} has id {ids[i]}, outside the vocabulary of {meta['tokenizer_size']}")
        if flags.max() > 1:
            fail(f"{data_dir}/{split}.words.bin: entry {int(np.argmax(flags > 1))} is not 0 or 1")
        data[split] = (ids, flags)
    return meta, data


def window(ids, flags, start, T):
    w_ids, w_flags = np.array(ids[start:start + T], np.int64), np.array(flags[start:start + T], np.uint8)
    w_flags[0] = 1  # a window may open mid-word: that fragment is a unit of its own
    return w_ids, w_flags


def whole_word_mask(ids, flags, rate, rng, meta, mask_only=False):
    """Mask whole-word units of one window until `rate` of its non-special tokens are covered.
    Training applies the 80/10/10 rule ([MASK] / random token / unchanged), decided per unit, not
    per token, so a word is never half [MASK] (BERT decides per token; docs/method.md §2).
    mask_only=True (validation) shows every chosen unit as [MASK], so no scored position can be
    answered by copying its visible input. Vectorised."""
    unit = np.cumsum(flags) - 1                      # unit index of every token
    special = ids <= meta["mask_id"]                 # [PAD] [UNK] [CLS] [SEP] [MASK]: never masked
    n_units = unit[-1] + 1
    length = np.bincount(unit, minlength=n_units)
    eligible = np.bincount(unit, weights=special, minlength=n_units) == 0
    # In plain words: shuffle the units, then walk down the shuffled list adding up their token
    # counts, and stop before the first unit that would carry the count further from the target
    # than leaving it out (a unit of length l is taken iff the count before it is <= target - l/2).
    # covered - length/2 only grows along the list, so one searchsorted finds where to stop.
    order = rng.permutation(np.flatnonzero(eligible))
    covered = np.cumsum(length[order])
    target = rate * (~special).sum()
    # take units in random order while that brings the masked count closer to the target
    k = int(np.searchsorted(covered - length[order] / 2, target, side="right"))
    chosen = np.zeros(n_units, bool)
    chosen[order[:k]] = True
    masked = chosen[unit]
    labels = np.where(masked, ids, -100)
    action = rng.random(n_units)[unit]               # one draw per unit
    if mask_only:
        action[:] = 0.0
    inputs = ids.copy()
    inputs[masked & (action < 0.8)] = meta["mask_id"]
    rand = masked & (action >= 0.8) & (action < 0.9)
    inputs[rand] = rng.integers(meta["mask_id"] + 1, meta["tokenizer_size"], rand.sum())
    return inputs, labels


def make_batch(split_data, starts, rates, rngs, meta, T, mask_only=False):
    """Masked (B, T) windows plus cu_seqlens: every [CLS] and every row edge starts a sequence, so
    packed documents never attend to each other and nothing is padded."""
    windows = [window(*split_data, s, T) for s in starts]
    rows = [whole_word_mask(ids, flags, r, g, meta, mask_only) for (ids, flags), r, g in zip(windows, rates, rngs)]
    inputs = np.stack([r[0] for r in rows])
    labels = np.stack([r[1] for r in rows])
    originals = np.concatenate([ids for ids, _ in windows])
    bounds = np.union1d(np.flatnonzero(originals == meta["cls_id"]), np.arange(len(starts) + 1) * T)
    return torch.from_numpy(inputs), torch.from_numpy(labels), torch.from_numpy(bounds.astype(np.int32))


def train_batch(data, meta, cfg, step, micro, rank, world, B, T):
    """Row g of the global batch at `step` is drawn by its own generator, seeded by (seed, step, g):
    the same global batch whatever the number of processes, and a resumed run needs only the step."""
    ids = data["train"][0]
    gens = [np.random.default_rng([cfg.seed, step, (micro * world + rank) * B + i]) for i in range(B)]
    starts = [int(g.integers(0, len(ids) - T)) for g in gens]
    return make_batch(data["train"], starts, [mask_rate(step, cfg)] * B, gens, meta, T)


def val_batches(data, meta, T, n_windows, B):
    """Fixed validation windows, spread evenly over val.bin, with a fixed 15% whole-word mask shown
    entirely as [MASK]: comparable across steps and runs, and nothing to copy."""
    ids = data["val"][0]
    T = min(T, len(ids))
    starts = sorted(set(np.linspace(0, len(ids) - T, n_windows).astype(int).tolist()))
    for i in range(0, len(starts), B):
        chunk = starts[i:i + B]
        yield make_batch(data["val"], chunk, [0.15] * len(chunk), [np.random.default_rng([0, s]) for s in chunk],
                         meta, T, mask_only=True)


def long_val_batches(data, meta, T, min_len):
    """One window of up to T tokens from the start of every validation document longer than
    min_len, so a token's RoPE position is its position in its document."""
    ids = data["val"][0]
    cls = np.flatnonzero(np.asarray(ids) == meta["cls_id"]).tolist() + [len(ids)]
    for a, b in zip(cls[:-1], cls[1:]):
        if b - a > min_len:
            yield make_batch(data["val"], [a], [0.15], [np.random.default_rng([0, a])], meta, min(T, b - a),
                             mask_only=True)


@torch.no_grad()
def evaluate(model, batches, baseline, device, autocast, theta, split_at=None):
    """Masked-LM loss and accuracy on the masked positions, next to two no-context baselines on
    exactly the same positions: the cross-entropy of the training unigram distribution and the
    accuracy of always guessing the most frequent training token. With split_at, the scores are
    kept apart for positions before it ("near") and from it on ("far")."""
    logp, top = baseline
    model.eval()
    sums = {}
    for inputs, labels, cu in batches:
        with autocast:
            logits, _ = model(inputs.to(device), labels=labels.to(device), cu_seqlens=cu.to(device),
                              rope_theta_global=theta)
        sel = labels != -100
        target = labels[sel]
        loss = torch.nn.functional.cross_entropy(logits.float(), target.to(device), reduction="none").cpu()
        pos = torch.arange(labels.shape[1]).expand_as(labels)[sel]
        group = ["all"] if split_at is None else np.where(pos.numpy() < split_at, "near", "far")
        for g in set(group):
            m = torch.ones_like(target, dtype=torch.bool) if split_at is None else torch.from_numpy(group == g)
            t = target[m]
            acc = sums.setdefault(g, np.zeros(5))
            acc += [loss[m].sum().item(), (logits.argmax(-1).cpu()[m] == t).sum().item(),
                    -logp[t].sum().item(), (t == top).sum().item(), len(t)]
    model.train()
    return {g: dict(loss=v[0] / v[4], acc=v[1] / v[4], unigram_ce=v[2] / v[4], top_acc=v[3] / v[4], n=int(v[4]))
            for g, v in sorted(sums.items(), key=lambda kv: ("all", "near", "far").index(kv[0])) if v[4] > 0}


# ------------------------------------------------------------------------------------------
# Outputs: log, checkpoint, plot, demo

def describe(r, what):
    """One line: a validation score next to its no-context baselines on the same positions."""
    return (f"{what}: loss {r['loss']:.4f} vs train-unigram {r['unigram_ce']:.4f} "
            f"({r['unigram_ce'] - r['loss']:+.3f} nats of context), acc {r['acc']:.2%} vs most frequent token "
            f"{r['top_acc']:.2%} ({100 * (r['acc'] - r['top_acc']):+.1f} points), {r['n']:,} positions")


CKPT_FORMAT = 2  # the layout of ckpt.pt; a checkpoint without this number predates it
RUN_FILES = ["ckpt.pt", "model.safetensors", "config.json", "tokenizer.json", "log.jsonl", "train.png"]
FROM_COMMAND_LINE = {"data_dir", "out_dir", "device", "resume"}  # never taken from a checkpoint


def load_checkpoint(path, cfg, explicit):
    """Read ckpt.pt as data only (weights_only=True: a crafted file cannot run code) and check that
    this train.py wrote it. Returns it and the run's settings: the checkpoint's, except those given
    now and the directories and device, which always come from the command line (a copied
    checkpoint must not send the outputs to the directory of the run it was copied from)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        fail(f"--resume=True but {path} " + ("is empty" if os.path.isfile(path) else "does not exist"))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        fail(f"{path}: not a checkpoint this train.py can read ({why(e)})")
    version = ckpt.get("format_version") if isinstance(ckpt, dict) else None
    if version != CKPT_FORMAT:
        fail(f"{path}: checkpoint format {version}, written by another version of train.py (this one reads {CKPT_FORMAT})")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    parts = ("config", "model_config", "model", "optimizer", "rng")
    fault = (next((f"lacks {k}" for k in (*parts, "step", "tokenizer_sha256") if k not in ckpt), None)
             or next((f"its {k} is not a mapping" for k in parts if not isinstance(ckpt[k], dict)), None)
             or ("it has unknown settings" if set(ckpt["config"]) - names else None))
    if fault:
        fail(f"{path}: damaged or written by another version of train.py ({fault})")
    trained_on = ckpt["config"].get("data_dir")
    if "data_dir" not in explicit and os.path.abspath(str(trained_on)) != os.path.abspath(cfg.data_dir):
        fail(f"{path}: trained on --data_dir={trained_on}; name the data to resume on with --data_dir "
             f"(directories are never taken from a checkpoint)")
    saved = {k: v for k, v in ckpt["config"].items() if k not in explicit | FROM_COMMAND_LINE}
    cfg = dataclasses.replace(cfg, **saved)
    validate_config(cfg, where=f"{path}: setting")
    return ckpt, cfg


def check_checkpoint_fits(ckpt, path, mcfg, meta):
    """Before the model is built: refuse a checkpoint of another model or of another tokenizer (its
    token ids would mean other text), although the vocabulary sizes may agree."""
    if ckpt["tokenizer_sha256"] != meta["tokenizer_sha256"]:
        fail(f"{path}: trained with another tokenizer than the data directory's (tokenizer sha256 "
             f"{str(ckpt['tokenizer_sha256'])[:12]}... vs {meta['tokenizer_sha256'][:12]}...): "
             f"resume with its own --data_dir")
    own, theirs = dataclasses.asdict(mcfg), ckpt["model_config"]
    diff = [k for k in own if k not in ("attn_backend", "max_seq_len", "rope_theta_global") and theirs.get(k) != own[k]]
    if diff:
        fail(f"{path}: a checkpoint of another model ({diff[0]}={theirs.get(diff[0])!r}, this run: {own[diff[0]]!r}); "
             f"resume with its preset and settings")


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
        fail(f"{path}: damaged checkpoint ({why(e)})")
    return ckpt["step"]


def export_model(cfg, model, meta):
    """The model directory: tokenizer.json, model.safetensors and config.json (which records the
    tokenizer's sha256, so whoever loads the model can check the two belong together)."""
    copy_file(os.path.join(cfg.data_dir, "tokenizer.json"), os.path.join(cfg.out_dir, "tokenizer.json"))
    model.save_pretrained(cfg.out_dir, extra_config=dict(tokenizer_sha256=meta["tokenizer_sha256"]))


def save_checkpoint(cfg, model, optimizer, step, stage, mcfg, meta):
    """One checkpoint = the model directory, then ckpt.pt, each file by an atomic rename. A kill in
    between leaves model files one checkpoint newer than ckpt.pt, never older, each of them whole
    and of the same step: nothing scores stale weights, and --resume rewrites the model files from
    ckpt.pt before training on (to bitwise the same weights). A full disk or a read-only directory is
    one line; the temporary file is removed and the previous ckpt.pt stays as it was."""
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    state = dict(format_version=CKPT_FORMAT, model=model.state_dict_clean(), optimizer=optimizer.state_dict(),
                 step=step, stage=stage, config=dataclasses.asdict(cfg), model_config=dataclasses.asdict(mcfg),
                 tokenizer_sha256=meta["tokenizer_sha256"],
                 rng=dict(torch=torch.get_rng_state(),
                          cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None),
                 data_position=dict(step=step, note="windows and masks are drawn from (seed, step, row)"))
    try:
        export_model(cfg, model, meta)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
    except Exception as e:
        fail(f"{cfg.out_dir}: cannot write the checkpoint of step {step} ({why(e)}); "
             f"{path} still holds the previous one")


def rewrite_log(path, step):
    """Keep log.jsonl up to `step` (None: start it empty), by an atomic rewrite, so a resumed run's
    log reads as one run and a kill mid-rewrite leaves the old log. A torn last line (a kill or a
    full disk mid-append) is dropped; a damaged line elsewhere is reported."""
    kept = []
    if step is not None and os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        for i, line in enumerate(lines):
            try:
                row = json.loads(line)
                if not (isinstance(row, dict) and type(row.get("step")) is int):
                    raise ValueError
            except ValueError:
                if i >= len(lines) - 2 and not any(lines[i + 1:]):
                    break  # the torn (or empty) end of the file
                fail(f"{path}: line {i + 1} is not a log row (damaged; remove the line or the file)")
            if row["step"] <= step:
                kept.append(line + "\n")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)


def append_log(path, row):
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        fail(f"{path}: cannot append ({why(e)}); resume from the last checkpoint with --resume=True")


def plot(log_path, out_png, cfg):
    """train.png: masked-only validation next to its no-context baselines, near/far positions of
    long documents, and the schedules. Dotted verticals mark stage switches."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in open(log_path)]
    tr = [r for r in rows if "loss" in r]
    ev = [r for r in rows if "val_loss" in r]
    lg = [r for r in rows if "far_loss" in r]
    fig, ax = plt.subplots(4, 1, figsize=(9, 12), sharex=True)
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
    for key, color in [("near", "tab:blue"), ("far", "tab:red")]:
        steps = [r["step"] for r in lg]
        ax[2].plot(steps, [r[f"{key}_loss"] for r in lg], "o-", color=color, label=f"{key}: val loss")
        ax[2].plot(steps, [r[f"{key}_unigram_ce"] for r in lg], "x:", color=color, label=f"{key}: unigram, same positions")
    near = stages(cfg)[0].seq_len
    ax[2].set_ylabel("long documents")
    ax[2].set_title(f"positions < {near} (near) and >= {near} (far) of validation documents longer than "
                    f"{2 * near} tokens, at the last stage's length", fontsize=9)
    if lg:
        ax[2].legend(loc="upper right", fontsize=8)
    ax[3].plot([r["step"] for r in tr], [r["lr"] for r in tr], color="tab:purple", label="learning rate")
    ax[3].set_ylabel("learning rate")
    rate = ax[3].twinx()
    rate.plot([r["step"] for r in tr], [r["mask_rate"] for r in tr], color="tab:brown", label="masking rate")
    rate.set_ylabel("masking rate")
    ax[3].set_xlabel("step")
    for st in stages(cfg)[1:]:
        for a in ax:
            a.axvline(round(st.start * cfg.max_steps), color="gray", ls=":")
    fig.suptitle("Chinese ModernBERT pre-training (dotted: a stage begins)")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def fill_mask_demo(model, data_dir, device):
    """Mask one whole jieba word in a few sentences and show the model's top guesses per token."""
    import rjieba
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(data_dir, "tokenizer.json"))
    sentences = ["北京是中华人民共和国的首都。", "这本书的内容非常精彩，推荐大家阅读。",
                 "酒店的服务态度很好，房间也很干净。", "今天的天气很好，我们一起去公园散步吧。"]
    model.eval()
    print("fill-mask demo (a whole jieba word masked; top-3 guesses for each of its tokens):")
    for text in sentences:
        words = rjieba.cut(text, True)
        word = max(words, key=len)  # the longest word: the most interesting one to guess
        a = text.index(word)
        enc = tok.encode(text)
        # every token that overlaps the word: a token crossing its edge belongs to the same unit
        pos = [i for i, (s, e) in enumerate(enc.offsets) if s < a + len(word) and e > a and e > s]
        ids = torch.tensor(enc.ids, device=device)
        ids[pos] = tok.token_to_id("[MASK]")
        with torch.no_grad():
            logits, _ = model(ids[None])
        guesses = ["/".join(tok.decode([t]) for t in logits[0, p].topk(3).indices.tolist()) for p in pos]
        print(f"  {text[:a]}[{word}]{text[a + len(word):]}  ->  {' + '.join(guesses)}")
    model.train()


# ------------------------------------------------------------------------------------------

def main(argv):
    cfg, explicit = parse_args(argv)
    validate_config(cfg)
    ckpt_path, ckpt = os.path.join(cfg.out_dir, "ckpt.pt"), None
    if cfg.resume:
        ckpt, cfg = load_checkpoint(ckpt_path, cfg, explicit)
    check_environment(cfg)
    meta, data = load_data(cfg.data_dir)
    ddp = int(os.environ.get("RANK", -1)) != -1  # launched by torchrun
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if ddp:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        dist.init_process_group(backend="nccl" if cfg.device == "cuda" else "gloo")
        rank, world, local = dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"])
        if cfg.device == "cuda":
            cfg.device = f"cuda:{local}"
            torch.cuda.set_device(cfg.device)
    else:
        rank, world = 0, 1
    master = rank == 0
    device_type = "cuda" if cfg.device.startswith("cuda") else cfg.device

    torch.manual_seed(cfg.seed)

    plan = stages(cfg)  # checked by validate_config
    longest = max(st.seq_len for st in plan)
    # The saved model is the one after the last stage: its config carries that stage's global theta
    # (training passes each stage's theta explicitly, so nothing is mutated mid-run).
    mcfg = config_from_preset(cfg.preset, vocab_size=meta["vocab_size"], norm=cfg.norm,
                              attn_backend=cfg.attn_backend, rope_theta_global=plan[-1].rope_theta,
                              max_seq_len=longest, pad_id=meta["pad_id"],
                              cls_id=meta["cls_id"], sep_id=meta["sep_id"], mask_id=meta["mask_id"])
    if len(data["train"][0]) <= longest:
        fail(f"{cfg.data_dir}: train.bin has {len(data['train'][0])} tokens, too few for windows of {longest}")
    if ckpt is not None:
        check_checkpoint_fits(ckpt, ckpt_path, mcfg, meta)
    model = CMBert(mcfg)
    # Start on the unigram plateau instead of spending the first steps climbing onto it: the decoder
    # bias is set to the log-frequency of every token (smoothed), so the very first prediction is the
    # corpus' unigram distribution and the gradient goes straight to using context.
    counts = np.bincount(data["train"][0], minlength=meta["vocab_size"]).astype(np.float64)
    counts[:meta["mask_id"] + 1] = 0  # special tokens are never labels
    unigram_logp = np.log((counts + 0.1) / (counts + 0.1).sum())
    with torch.no_grad():
        model.decoder.bias.copy_(torch.from_numpy(unigram_logp))
    # the no-context baselines of validation: this smoothed train unigram and its most frequent token
    baseline = (torch.from_numpy(unigram_logp), int(counts.argmax()))
    model.to(cfg.device)
    # Fused AdamW: one kernel for all parameters, on CUDA and (torch >= 2.4) on a CPU, where the step
    # over the 10M parameters of the tiny model is ~7x faster than the per-parameter loop.
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr_max, (cfg.beta1, cfg.beta2), fused=True)
    step = 0
    if ckpt is not None:
        step = restore_checkpoint(ckpt, ckpt_path, model, optimizer)
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)  # compiles at step 1, once more when the document count first changes, at stage 2 and for evaluation
        reported = [0.0]

        def print_compile_time(*_):  # runs before each step: what the previous step spent compiling
            spent = compile_seconds() - reported[0]
            if master and spent > 1:
                reported[0] += spent
                tqdm.write(f"torch.compile: {spent:.0f} s")
        model.register_forward_pre_hook(print_compile_time)
    if ddp:
        model = DDP(model, device_ids=[local] if device_type == "cuda" else None)
    try:
        cfg.dtype = resolve_dtype(cfg.device, cfg.dtype)
    except ValueError as e:
        fail(f"--dtype: {e}")
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    peak_flops = device_peak_flops(cfg.device, torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32) if master else None

    log_path = os.path.join(cfg.out_dir, "log.jsonl")
    if master:
        rewrite_log(log_path, step if ckpt is not None else None)
        if ckpt is not None:  # repair: model files newer than ckpt.pt (a kill between the two) are rewritten
            export_model(cfg, raw_model, meta)
        print(f"model: {raw_model.num_params() / 1e6:.2f}M parameters ({raw_model.num_params(False) / 1e6:.2f}M "
              f"without embeddings), {mcfg.n_layer} layers x {mcfg.n_embd}; data: {meta['train_tokens']:,} "
              f"train tokens; {world} process(es) on {cfg.device}, {cfg.dtype}")
        for i, st in enumerate(plan):
            a = round(st.start * cfg.max_steps)
            b = round(plan[i + 1].start * cfg.max_steps) if i + 1 < len(plan) else cfg.max_steps
            print(f"stage {i + 1}: steps {a}-{b}, {st.batch_size} x {st.seq_len} tokens x {cfg.grad_accum} micro-step(s) x "
                  f"{world} process(es) = {st.batch_size * st.seq_len * cfg.grad_accum * world:,} tokens per step, "
                  f"global RoPE theta {st.rope_theta:g}")

    def log(row):
        append_log(log_path, row)

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (master and cfg.progress), unit="step",
               dynamic_ncols=True)
    t_start, tokens_seen, bad_steps = time.time(), 0, 0
    stage_now, results, long_results = None, None, None
    T_eval, B_eval, T_long = plan[0].seq_len, plan[0].batch_size, plan[-1].seq_len
    switches = {round(st.start * cfg.max_steps) for st in plan[1:]}
    while step < cfg.max_steps:
        stage, st = stage_at(step, cfg)
        T, B, theta = st.seq_len, st.batch_size, st.rope_theta
        if stage != stage_now:
            if master and (stage_now is not None or stage > 0):  # a switch, or a resume in a later stage
                tqdm.write(f"step {step}: stage {stage + 1}, sequence length {T}, {B} sequence(s) per micro-step, "
                           f"global RoPE theta {theta:g}")
            stage_now = stage
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rate = mask_rate(step, cfg)
        t0 = time.time()
        loss_sum = torch.zeros((), device=cfg.device)  # summed on the device: one host sync per step, not per micro-step
        for micro in range(cfg.grad_accum):
            inputs, labels, cu = train_batch(data, meta, cfg, step, micro, rank, world, B, T)
            if ddp:  # synchronise gradients only on the last micro-step
                model.require_backward_grad_sync = micro == cfg.grad_accum - 1
            with autocast:
                _, loss = model(inputs.to(cfg.device), labels=labels.to(cfg.device), cu_seqlens=cu.to(cfg.device),
                                rope_theta_global=theta)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach().float() / cfg.grad_accum
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        bad = (~(torch.isfinite(loss_sum) & torch.isfinite(norm))).float()
        if ddp:
            dist.all_reduce(bad)
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        skipped = bad.item() > 0
        loss_sum = loss_sum.item()
        if skipped:  # skip the update; several in a row stop the run, the last checkpoint intact
            optimizer.zero_grad(set_to_none=True)
            bad_steps += 1
            if bad_steps >= cfg.max_bad_steps:
                if master:
                    bar.close()
                fail(f"{bad_steps} non-finite steps in a row at step {step}; stopping. "
                         f"The last good checkpoint is {ckpt_path} (try a lower --lr_max)")
        else:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bad_steps = 0
        step += 1
        dt = time.time() - t0
        n_tokens = B * T * cfg.grad_accum * world
        tokens_seen += n_tokens
        if master:
            tok_s = n_tokens / dt
            mfu = raw_model.estimate_mfu(tok_s / world, T, peak_flops, rate)
            log(dict(step=step, tokens=step_tokens(step, cfg, world), stage=stage + 1, seq_len=T, lr=lr,
                     mask_rate=round(rate, 6), loss=round(loss_sum, 6),
                     skipped=skipped, tok_s=round(tok_s)))
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}", mask=f"{rate:.2f}",
                            tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.1%}" if mfu else "n/a")
            bar.update(1)
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                r = results = evaluate(raw_model, val_batches(data, meta, T_eval, cfg.eval_windows, B_eval), baseline,
                                       cfg.device, autocast, theta)["all"]
                log(dict(step=step, **{f"val_{k}": round(v, 6) for k, v in r.items()}))
                tqdm.write(f"step {step}: {describe(r, 'val (masked positions only)')}")
            if step in switches or step == cfg.max_steps:  # what the context extension buys, and what it costs
                long_results = evaluate(raw_model, long_val_batches(data, meta, T_long, 2 * T_eval), baseline,
                                        cfg.device, autocast, theta, split_at=T_eval)
                if long_results:
                    log(dict(step=step, long_seq_len=T_long, **{f"{g}_{k}": round(v, 6) for g, r in long_results.items()
                                                                for k, v in r.items()}))
                    for g, r in long_results.items():
                        where = f"< {T_eval}" if g == "near" else f">= {T_eval}"
                        tqdm.write(f"step {step}: {describe(r, f'long documents, positions {where}')}")
            if step % cfg.ckpt_interval == 0 or step == cfg.max_steps:
                save_checkpoint(cfg, raw_model, optimizer, step, stage_at(step, cfg)[0] + 1, mcfg, meta)
                plot(log_path, os.path.join(cfg.out_dir, "train.png"), cfg)
    bar.close()
    if master:
        elapsed = time.time() - t_start
        print(f"done: {step} steps, {tokens_seen:,} tokens in {elapsed / 60:.1f} min ({tokens_seen / max(elapsed, 1e-9):,.0f} "
              f"tokens/s this session)")
        if results:
            print("  " + describe(results, f"final val, masked positions only ({T_eval}-token windows)"))
        for g, r in (long_results or {}).items():
            where = f"< {T_eval}" if g == "near" else f">= {T_eval}"
            print("  " + describe(r, f"final long documents ({T_long}-token windows), positions {where}"))
        print(f"  wrote {cfg.out_dir}/: log.jsonl, train.png, ckpt.pt, model.safetensors, config.json, tokenizer.json")
        if cfg.demo:
            fill_mask_demo(raw_model, cfg.data_dir, cfg.device)
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except OSError as e:  # a full disk, a read-only or vanished directory: one line naming the path
        fail(f"{e.filename or 'a file'}: {why(e)}")
