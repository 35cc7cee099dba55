"""
Pre-train Chinese ModernBERT with the paper's recipe: whole-word masking with a 15 -> 30 -> 15%
curriculum, a damped-cosine learning rate, and a 1,024 -> 8,192 sequence-length stage switch.

    python train.py                                   # the tiny CPU demo (config/tiny.py), ~8 minutes
    python train.py config/base.py --max_steps=2000   # a config file, then overrides
    torchrun --standalone --nproc_per_node=8 train.py config/paper_large.py
    python train.py --help                            # every setting with its default
"""
import ast, dataclasses, glob, inspect, json, math, os, shutil, sys, tempfile, time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from cmbert import (PRESETS, CMBert, atomic_path, config_from_preset, device_peak_flops, flash_attn_available,
                    resolve_dtype)
from prepare import FORMAT_VERSION as DATA_FORMAT, sha256


@dataclass
class TrainConfig:
    # data and output
    data_dir: str = "data/default"   # written by prepare.py
    out_dir: str = "out"
    # model (a preset of cmbert.py, plus the knobs a student may want to turn)
    preset: str = "tiny"
    norm: str = "rmsnorm"            # the paper's RMSNorm; "layernorm" = ModernBERT exactly (save_hf works)
    attn_backend: str = "auto"       # auto | flash | torch
    compile: bool = False            # torch.compile the model
    dtype: str = "auto"              # autocast: auto = bf16 on CUDA and on CPUs with native bf16 (AMX/AVX512-BF16), else fp32; or float32 | bfloat16
    # stage 1, then stage 2 (context extension) from stage2_start (a fraction of max_steps)
    max_steps: int = 700
    seq_len: int = 1024
    batch_size: int = 2              # sequences per micro-step and process
    grad_accum: int = 1              # micro-steps per optimiser step
    stage2_start: float = 0.98       # 1.0 = no stage 2
    stage2_seq_len: int = 8192       # the stage-2 batch shrinks so tokens per step stay about the same
    rope_theta_stage1: float = 80000.0  # RoPE theta of the global layers, per stage (local: 10k)
    rope_theta_stage2: float = 80000.0
    # whole-word masking curriculum: linear min -> max over mask_warmup, then back to min at the end
    mask_min: float = 0.15
    mask_max: float = 0.30           # = mask_min for a constant rate
    mask_warmup: float = 0.05        # fraction of max_steps (the paper's S_w is unconfirmed)
    # damped-cosine learning rate (DESIGN.md §1) after a linear warm-up
    lr_max: float = 3e-3
    lr_min: float = 3e-4
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
    eval_windows: int = 12           # validation windows of seq_len (stage 2 also evaluates at 8,192)
    ckpt_interval: int = 100
    resume: bool = False
    seed: int = 1337
    device: str = "auto"             # auto = cuda, then mps, then cpu
    demo: bool = True                # fill-mask examples at the end
    progress: bool = True            # tqdm bar


def parse_args(argv):
    """Config files (config/*.py, plain assignments), then --name=value overrides, typed by the
    dataclass. Returns (config, the names set explicitly)."""
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

    for arg in argv:
        if arg in ("-h", "--help"):
            src = inspect.getsource(TrainConfig).split("\n", 2)[2]
            print(__doc__.strip() + "\n\nSettings (override with --name=value; booleans True/False):\n" + src)
            sys.exit(0)
        if arg.startswith("--"):
            name, eq, raw = arg[2:].partition("=")
            if not eq:
                fail(f"{arg}: write settings as --name=value")
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
            fail(f"{arg!r} is neither a config file nor --name=value")
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
    ("seq_len", at_least(2), ">= 2"),
    ("batch_size", at_least(1), ">= 1"),
    ("grad_accum", at_least(1), ">= 1"),
    ("stage2_start", finite(0, 1), "in [0, 1] (a fraction of max_steps; 1 = no stage 2)"),
    ("stage2_seq_len", at_least(2), ">= 2"),
    ("rope_theta_stage1", finite(1e-9, math.inf), "> 0"),
    ("rope_theta_stage2", finite(1e-9, math.inf), "> 0"),
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
    P(p) = lr_max (1 - (1 - gamma) p) and valleys V(p) = lr_max/2 (1 - p) + lr_min p (DESIGN.md §1)."""
    if step < cfg.warmup_steps:
        return cfg.lr_max * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    peak = cfg.lr_max * (1 - (1 - cfg.lr_damping) * p)
    valley = cfg.lr_max / 2 * (1 - p) + cfg.lr_min * p
    return (peak + valley) / 2 + (peak - valley) / 2 * math.cos(math.pi * (2 * cfg.lr_cycles - 1) * p)


def stage_of(step, cfg):
    """(stage, seq_len, sequences per micro-step) at this step."""
    if step < round(cfg.stage2_start * cfg.max_steps):
        return 1, cfg.seq_len, cfg.batch_size
    return 2, cfg.stage2_seq_len, max(1, cfg.batch_size * cfg.seq_len // cfg.stage2_seq_len)


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


def whole_word_mask(ids, flags, rate, rng, meta):
    """Mask whole-word units of one window until `rate` of its non-special tokens are covered.
    The 80/10/10 rule ([MASK] / random token / unchanged) is decided per unit, not per token, so a
    word is never half [MASK] (BERT decides per token; DESIGN.md §3 allows either). Vectorised."""
    unit = np.cumsum(flags) - 1                      # unit index of every token
    special = ids <= meta["mask_id"]                 # [PAD] [UNK] [CLS] [SEP] [MASK]: never masked
    n_units = unit[-1] + 1
    length = np.bincount(unit, minlength=n_units)
    eligible = np.bincount(unit, weights=special, minlength=n_units) == 0
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
    inputs = ids.copy()
    inputs[masked & (action < 0.8)] = meta["mask_id"]
    rand = masked & (action >= 0.8) & (action < 0.9)
    inputs[rand] = rng.integers(meta["mask_id"] + 1, meta["tokenizer_size"], rand.sum())
    return inputs, labels


def make_batch(split_data, starts, rates, rngs, meta, T):
    """Masked (B, T) windows plus cu_seqlens: every [CLS] and every row edge starts a sequence, so
    packed documents never attend to each other and nothing is padded."""
    windows = [window(*split_data, s, T) for s in starts]
    rows = [whole_word_mask(ids, flags, r, g, meta) for (ids, flags), r, g in zip(windows, rates, rngs)]
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
    """Fixed validation windows with fixed 15% whole-word masking: comparable across steps and runs."""
    ids = data["val"][0]
    starts = list(range(0, len(ids) - T + 1, T))[:n_windows] or [0]
    T = min(T, len(ids))
    for i in range(0, len(starts), B):
        chunk = starts[i:i + B]
        yield make_batch(data["val"], chunk, [0.15] * len(chunk),
                         [np.random.default_rng([0, s]) for s in chunk], meta, T)


@torch.no_grad()
def evaluate(model, data, meta, T, n_windows, B, device, autocast, top_token=None):
    model.eval()
    loss_sum = correct = baseline = n = 0
    for inputs, labels, cu in val_batches(data, meta, T, n_windows, B):
        with autocast:
            logits, loss = model(inputs.to(device), labels=labels.to(device), cu_seqlens=cu.to(device))
        target = labels[labels != -100].to(device)
        loss_sum += loss.item() * len(target)
        correct += (logits.argmax(-1) == target).sum().item()
        baseline += (target == top_token).sum().item() if top_token is not None else 0
        n += len(target)
    model.train()
    return loss_sum / max(n, 1), correct / max(n, 1), baseline / max(n, 1)


# ------------------------------------------------------------------------------------------
# Outputs: log, checkpoint, plot, demo

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
    with atomic_path(os.path.join(cfg.out_dir, "tokenizer.json")) as tmp:
        shutil.copyfile(os.path.join(cfg.data_dir, "tokenizer.json"), tmp)
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


def plot(log_path, out_png, cfg, unigram_entropy):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in open(log_path)]
    tr = [r for r in rows if "loss" in r]
    ev = [r for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    ax[0].plot([r["step"] for r in tr], [r["loss"] for r in tr], lw=0.6, label="train loss")
    ax[0].plot([r["step"] for r in ev], [r["val_loss"] for r in ev], "o-", label="val loss (15% WWM)")
    ax[0].axhline(unigram_entropy, color="tab:orange", ls=":", lw=1, label="unigram entropy (no context)")
    ax[0].set_ylabel("MLM loss")
    acc = ax[0].twinx()
    acc.plot([r["step"] for r in ev], [r["val_acc"] for r in ev], "s--", color="tab:green", label="val acc")
    if ev:
        acc.axhline(ev[-1]["top_token_acc"], color="tab:green", ls=":", lw=1, label="most frequent token")
    acc.set_ylabel("val accuracy")
    ax[0].legend(loc="upper center")
    acc.legend(loc="upper right")
    for a, key, label in [(ax[1], "lr", "learning rate"), (ax[2], "mask_rate", "masking rate"),
                          (ax[3], "seq_len", "sequence length")]:
        a.plot([r["step"] for r in tr], [r[key] for r in tr])
        a.set_ylabel(label)
    switch = round(cfg.stage2_start * cfg.max_steps)
    for a in ax:
        if switch < cfg.max_steps:
            a.axvline(switch, color="gray", ls=":")
    ax[3].set_xlabel("step")
    fig.suptitle("Chinese ModernBERT pre-training (dotted: stage 2 begins)")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
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

    mcfg = config_from_preset(cfg.preset, vocab_size=meta["vocab_size"], norm=cfg.norm,
                              attn_backend=cfg.attn_backend, rope_theta_global=cfg.rope_theta_stage1,
                              max_seq_len=max(cfg.seq_len, cfg.stage2_seq_len), pad_id=meta["pad_id"],
                              cls_id=meta["cls_id"], sep_id=meta["sep_id"], mask_id=meta["mask_id"])
    if len(data["train"][0]) <= max(cfg.seq_len, cfg.stage2_seq_len if cfg.stage2_start < 1 else 0):
        fail(f"{cfg.data_dir}: train.bin has {len(data['train'][0])} tokens, "
                 f"too few for windows of {cfg.stage2_seq_len if cfg.stage2_start < 1 else cfg.seq_len}")
    if ckpt is not None:
        check_checkpoint_fits(ckpt, ckpt_path, mcfg, meta)
    model = CMBert(mcfg)
    # Start on the unigram plateau instead of spending the first steps climbing onto it: the decoder
    # bias is set to the log-frequency of every token (smoothed), so the very first prediction is the
    # corpus' unigram distribution and the gradient goes straight to using context.
    counts = np.bincount(data["train"][0], minlength=meta["vocab_size"]).astype(np.float64)
    counts[:meta["mask_id"] + 1] = 0  # special tokens are never labels
    with torch.no_grad():
        model.decoder.bias.copy_(torch.from_numpy(np.log((counts + 0.1) / (counts + 0.1).sum())))
    model.to(cfg.device)
    # Fused AdamW on CUDA. On a CPU the fused step is ~7x faster but not bitwise the same (~1e-8 per
    # step), and this short, high-lr recipe is chaotic: one default run ended at val loss 7.77
    # instead of 7.39 (the losses agree for 10 steps and part at the second lr peak). Unfused on CPU
    # until that is measured over several seeds.
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr_max, (cfg.beta1, cfg.beta2), fused=device_type == "cuda")
    step = 0
    if ckpt is not None:
        step = restore_checkpoint(ckpt, ckpt_path, model, optimizer)
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
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
        top_token = int(counts.argmax())
        p = counts[counts > 0] / counts.sum()
        unigram_entropy = float(-(p * np.log(p)).sum())
        print(f"model: {raw_model.num_params() / 1e6:.2f}M parameters ({raw_model.num_params(False) / 1e6:.2f}M "
              f"without embeddings), {mcfg.n_layer} layers x {mcfg.n_embd}; data: {meta['train_tokens']:,} "
              f"train tokens; {world} process(es) on {cfg.device}, {cfg.dtype}")

    def log(row):
        append_log(log_path, row)

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (master and cfg.progress), unit="step",
               dynamic_ncols=True)
    t_start, tokens_seen, bad_steps = time.time(), 0, 0
    stage_now = None
    while step < cfg.max_steps:
        stage, T, B = stage_of(step, cfg)
        if stage != stage_now:
            theta = cfg.rope_theta_stage1 if stage == 1 else cfg.rope_theta_stage2
            if master and (stage_now is not None or stage == 2):  # a switch, or a resume in stage 2
                tqdm.write(f"step {step}: stage {stage}, sequence length {T}, {B} sequence(s) per micro-step, "
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
            log(dict(step=step, tokens=step_tokens(step, cfg, world), stage=stage, seq_len=T, lr=lr,
                     mask_rate=round(rate, 6), loss=round(loss_sum, 6),
                     skipped=skipped, tok_s=round(tok_s)))
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}", mask=f"{rate:.2f}",
                            tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.1%}" if mfu else "n/a")
            bar.update(1)
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                row = dict(step=step)
                row["val_loss"], row["val_acc"], base = evaluate(raw_model, data, meta, cfg.seq_len, cfg.eval_windows,
                                                                 cfg.batch_size, cfg.device, autocast, top_token)
                if stage == 2:
                    row["val_loss_8k"], row["val_acc_8k"], _ = evaluate(raw_model, data, meta, cfg.stage2_seq_len, 1,
                                                                        1, cfg.device, autocast)
                row["top_token_acc"] = base
                log({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
                tqdm.write(f"step {step}: val loss {row['val_loss']:.4f}, val acc {row['val_acc']:.2%} "
                           f"(most frequent token: {base:.2%})")
            if step % cfg.ckpt_interval == 0 or step == cfg.max_steps:
                save_checkpoint(cfg, raw_model, optimizer, step, stage_of(step, cfg)[0], mcfg, meta)
                plot(log_path, os.path.join(cfg.out_dir, "train.png"), cfg, unigram_entropy)
    bar.close()
    if master:
        val_loss, val_acc, base = evaluate(raw_model, data, meta, cfg.seq_len, cfg.eval_windows, cfg.batch_size,
                                           cfg.device, autocast, top_token)
        elapsed = time.time() - t_start
        print(f"done: {step} steps, {tokens_seen:,} tokens in {elapsed / 60:.1f} min ({tokens_seen / elapsed:,.0f} "
              f"tokens/s this session)\n"
              f"  final val loss {val_loss:.4f} (unigram entropy of the corpus: {unigram_entropy:.4f})\n"
              f"  final val acc  {val_acc:.2%} (always predicting the most frequent token: {base:.2%})\n"
              f"  wrote {cfg.out_dir}/: log.jsonl, train.png, ckpt.pt, model.safetensors, config.json, tokenizer.json")
        if cfg.demo:
            fill_mask_demo(raw_model, cfg.data_dir, cfg.device)
    if ddp:
        dist.destroy_process_group()


def step_tokens(step, cfg, world):
    """Tokens seen after `step` optimiser steps (a function of the step, so resumed logs match)."""
    switch = round(cfg.stage2_start * cfg.max_steps)
    (_, T1, B1), (_, T2, B2) = stage_of(0, cfg), stage_of(max(switch, 0), cfg)
    n1 = min(step, switch)
    return (n1 * T1 * B1 + (step - n1) * T2 * B2) * cfg.grad_accum * world


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except OSError as e:  # a full disk, a read-only or vanished directory: one line naming the path
        fail(f"{e.filename or 'a file'}: {why(e)}")
