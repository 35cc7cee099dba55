"""
Pre-train Chinese ModernBERT with the paper's recipe: whole-word masking with a 15 -> 30 -> 15%
curriculum, a damped-cosine learning rate, and a 1,024 -> 8,192 sequence-length stage switch.

    python train.py                                   # the ten-minute CPU run (config/tiny.py)
    python train.py config/base.py --max_steps=2000   # a config file, then overrides
    torchrun --standalone --nproc_per_node=8 train.py config/paper_large.py
    python train.py --help                            # every setting with its default
"""
import math, os, time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from cmbert import ATTN_BACKENDS, NORMS, PRESETS, CMBert, config_from_preset, flash_attn_available
from support import run_files, runtime, settings, stats
from support.dataset import load as load_data
from support.errors import Refused, script
from support.fill_mask import demo
from support.plots import plot_run


@dataclass
class TrainConfig:
    # ---- the recipe ----
    preset: str = "tiny"             # the model's shape: a preset of cmbert.py
    norm: str = "rmsnorm"            # the paper's RMSNorm; "layernorm" = ModernBERT exactly (exports without remote code)
    # The recipe's stages, one plain record each, looked up by step: `start` is where the stage
    # begins (a fraction of max_steps; the first starts at 0), `seq_len` its window length,
    # `batch_size` its windows per micro-step (the global batch: each of N processes takes
    # batch_size / N of them), `rope_theta` the global layers' RoPE theta (local layers keep
    # rope_theta_local). Tokens per step are batch_size * seq_len * grad_accum on any number of
    # processes; they change at a switch unless the batch sizes keep them constant. Adding a stage
    # is adding a record here (or in a config file). Every schedule length is a fraction of
    # max_steps, so a shorter run is the same recipe in miniature.
    stages: list = field(default_factory=lambda: [
        dict(start=0.0, seq_len=256, batch_size=8, rope_theta=10000.0),
        dict(start=0.75, seq_len=2048, batch_size=1, rope_theta=80000.0)])
    max_steps: int = 850
    grad_accum: int = 1              # micro-steps per optimiser step (less memory, the same step)
    # whole-word masking curriculum: linear min -> max over mask_warmup, then back to min at the end
    whole_word: bool = True          # False: mask single tokens instead of whole-word units (an ablation)
    mask_min: float = 0.15
    mask_max: float = 0.30           # = mask_min for a constant rate
    mask_warmup: float = 0.05        # fraction of max_steps (the paper's S_w is unconfirmed)
    # damped-cosine learning rate (docs/method.md §4) after a linear warm-up
    lr_schedule: str = "damped_cosine"  # or "cosine": one plain cosine from lr_max to lr_min (an ablation)
    lr_max: float = 2e-3
    lr_min: float = 2e-4
    lr_warmup: float = 0.035         # linear warm-up: a fraction of max_steps (30 of the default's 850)
    lr_cycles: int = 2               # N: cosine half-periods are 2N - 1, so it ends in a valley
    lr_damping: float = 0.5          # gamma: the peaks decay linearly to gamma * lr_max
    embedding_lr_scale: float = 1.0  # the (tied) embedding's learning rate, as a multiple of lr
    # AdamW
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0           # 0 = off
    # ---- the run: data, output, hardware, how often to evaluate and save ----
    data_dir: str = "data/default"   # written by prepare.py
    out_dir: str = "out"
    attn_backend: str = "auto"       # auto | torch | flex | flash (cmbert.py: the same rule, other kernels)
    compile: bool = torch.cuda.is_available()  # torch.compile: on where there is a GPU, off on CPU (compiling takes minutes there)
    dtype: str = "auto"              # autocast: auto = bf16 on CUDA and on CPUs with native bf16 (AMX/AVX512-BF16), else fp32; or float32 | bfloat16
    device: str = "auto"             # auto = cuda, then mps, then cpu
    seed: int = 1337                 # the initialisation and the order of the data (study.py runs several)
    max_bad_steps: int = 5           # consecutive non-finite steps before the run stops
    eval_interval: int = 170
    eval_windows: int = 1024         # validation windows of the first stage's length, spread over the validation split
    eval_long_len: int = 0           # long-document windows: 0 = the last stage's length (set it to compare a one-stage run)
    eval_long_docs: int = 64         # long validation documents scored at each stage switch and at the end (a fixed sample)
    ckpt_interval: int = 100
    resume: bool = False
    demo: bool = True                # fill-mask examples at the end
    progress: bool = True            # tqdm bar
    tracker: str = ""                # also send log.jsonl's rows to "tensorboard" or "wandb" (pip install it; docs/training.md)


# ------------------------------------------------------------------------------------------
# Schedules: masking rate, learning rate, stage (all functions of the step alone)

def mask_rate(step, cfg):
    """The masking curriculum (docs/method.md §3): mask_min -> mask_max over the first mask_warmup
    of the steps, then linearly back to mask_min at the last step."""
    warm = max(1, round(cfg.mask_warmup * cfg.max_steps))
    if step <= warm:
        return cfg.mask_min + (cfg.mask_max - cfg.mask_min) * step / warm
    return cfg.mask_max - (cfg.mask_max - cfg.mask_min) * (step - warm) / max(1, cfg.max_steps - warm)


def learning_rate(step, cfg):
    """Linear warm-up over the first lr_warmup of the steps, then eta(p) = (P + V)/2 + (P - V)/2
    cos(pi (2N - 1) p) with decaying peaks P(p) = lr_max (1 - (1 - gamma) p) and valleys
    V(p) = lr_max/2 (1 - p) + lr_min p (docs/method.md §4)."""
    warm = round(cfg.lr_warmup * cfg.max_steps)
    if step < warm:
        return cfg.lr_max * (step + 1) / warm
    p = min(1.0, (step - warm) / max(1, cfg.max_steps - warm))
    if cfg.lr_schedule == "cosine":  # the ablation: no oscillation, no damping
        return cfg.lr_min + (cfg.lr_max - cfg.lr_min) * (1 + math.cos(math.pi * p)) / 2
    peak = cfg.lr_max * (1 - (1 - cfg.lr_damping) * p)
    valley = cfg.lr_max / 2 * (1 - p) + cfg.lr_min * p
    return (peak + valley) / 2 + (peak - valley) / 2 * math.cos(math.pi * (2 * cfg.lr_cycles - 1) * p)


@dataclass
class Stage:
    start: float        # fraction of max_steps where the stage begins
    seq_len: int        # tokens per window
    batch_size: int     # windows per micro-step, over all processes
    rope_theta: float   # RoPE theta of the global layers during this stage
    first: int = field(default=0, compare=False)  # its first step and the step after its last,
    end: int = field(default=0, compare=False)    # computed once by stages()


def stages(cfg):
    """The stage plan of a config, checked, with each stage's steps: the first starts at 0, starts
    increase. A record is a dict or a tuple in field order: --stages="[(0, 1024, 2, 8e4), (0.9, 8192, 1, 1.6e5)]"."""
    plan = [Stage(**s) if isinstance(s, dict) else Stage(*s) for s in cfg.stages]
    if not plan or plan[0].start != 0 or any(a.start >= b.start for a, b in zip(plan, plan[1:])) or plan[-1].start >= 1:
        raise ValueError(f"stages: starts must begin at 0 and increase below 1, got {[s.start for s in plan]}")
    for st, after in zip(plan, plan[1:] + [None]):
        st.first = round(st.start * cfg.max_steps)
        st.end = round(after.start * cfg.max_steps) if after else cfg.max_steps
    return plan


def stage_at(step, plan):
    """(index, Stage) of the stage that trains at this step; `plan` is stages(cfg) (or the config)."""
    plan = stages(plan) if isinstance(plan, TrainConfig) else plan
    i = sum(step >= st.first for st in plan) - 1
    return i, plan[i]


def step_tokens(step, plan, grad_accum=None):
    """Tokens seen after `step` optimiser steps (a function of the step, so resumed logs match)."""
    if isinstance(plan, TrainConfig):
        plan, grad_accum = stages(plan), plan.grad_accum
    return sum(max(0, min(step, st.end) - st.first) * st.batch_size * st.seq_len for st in plan) * grad_accum


# ------------------------------------------------------------------------------------------
# Data: packed windows of the token stream, whole-word masking

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


def make_batch(split_data, starts, rates, rngs, meta, T, mask_only=False, whole_word=True):
    """Masked (B, T) windows plus cu_seqlens: every [CLS] and every row edge starts a sequence, so
    packed documents never attend to each other and nothing is padded. whole_word=False masks
    single tokens (every token a unit of its own): the ablation of whole-word masking."""
    windows = [window(*split_data, s, T) for s in starts]
    rows = [whole_word_mask(ids, flags if whole_word else np.ones_like(flags), r, g, meta, mask_only)
            for (ids, flags), r, g in zip(windows, rates, rngs)]
    inputs = np.stack([r[0] for r in rows])
    labels = np.stack([r[1] for r in rows])
    originals = np.concatenate([ids for ids, _ in windows])
    bounds = np.union1d(np.flatnonzero(originals == meta["cls_id"]), np.arange(len(starts) + 1) * T)
    return torch.from_numpy(inputs), torch.from_numpy(labels), torch.from_numpy(bounds.astype(np.int32))


def train_batch(data, meta, cfg, step, micro, rank, world, B, T, rate=None):
    """This process' share of micro-batch `micro` of the global batch at `step` (B windows of T tokens
    over all processes; rank r takes rows r * B/world, ...). Row g is drawn by its own generator,
    seeded by (seed, step, g): the same global batch whatever the number of processes, and a resumed
    run needs only the step."""
    ids = data["train"][0]
    share = B // world
    gens = [np.random.default_rng([cfg.seed, step, micro * B + rank * share + i]) for i in range(share)]
    starts = [int(g.integers(0, len(ids) - T)) for g in gens]
    rate = mask_rate(step, cfg) if rate is None else rate
    return make_batch(data["train"], starts, [rate] * share, gens, meta, T, whole_word=cfg.whole_word)


# ------------------------------------------------------------------------------------------
# Validation: masked positions only, next to no-context baselines on the same positions

VAL_RATE = 0.15  # fixed, so validation scores compare across steps, stages and runs


def documents_of(doc_starts, starts, T):
    """The validation document each position of the windows beginning at `starts` belongs to, (B, T):
    the standard errors treat a document as one draw (support/stats.py)."""
    return np.searchsorted(doc_starts, np.asarray(starts)[:, None] + np.arange(T), side="right") - 1


def val_batches(data, meta, T, n_windows, B):
    """Fixed validation windows, spread evenly over the validation split, with a fixed whole-word mask
    shown entirely as [MASK]: comparable across steps and runs, and nothing to copy."""
    ids = data["val"][0]
    T = min(T, len(ids))
    starts = sorted(set(np.linspace(0, len(ids) - T, n_windows).astype(int).tolist()))
    for i in range(0, len(starts), B):
        chunk = starts[i:i + B]
        yield make_batch(data["val"], chunk, [VAL_RATE] * len(chunk), [np.random.default_rng([0, s]) for s in chunk],
                         meta, T, mask_only=True) + (documents_of(ids.doc_starts, chunk, T),)


def long_val_batches(data, meta, T, min_len, n_docs):
    """One window of up to T tokens from the start of each of n_docs validation documents longer
    than min_len (a token's RoPE position is then its position in its document). The documents are
    a fixed sample, spread evenly over all such documents: the cost is set by n_docs, not the corpus."""
    ids = data["val"][0]
    cls = ids.doc_starts.tolist() + [len(ids)]  # where documents begin: prepare.py's index, not a scan of val
    long = [d for d in range(len(cls) - 1) if cls[d + 1] - cls[d] > min_len]
    for k in sorted(set(np.linspace(0, len(long) - 1, n_docs).astype(int).tolist())) if long else []:
        d = long[k]
        a, n = cls[d], min(T, cls[d + 1] - cls[d])
        yield make_batch(data["val"], [a], [VAL_RATE], [np.random.default_rng([0, a])], meta, n,
                         mask_only=True) + (np.full((1, n), d),)


def long_documents(model, data, meta, plan, T_long, n_docs, baseline, device, autocast, theta):
    """What the context extension buys. n_docs validation documents longer than twice the first
    stage's length are scored from their start in a window of the last stage's length: positions
    before the first stage's length ("near") and from it on ("far") apart. The near positions are
    scored once more in a window of the first stage's length ("short"): the same positions, the
    same mask, the same visible tokens around them, only the window is shorter. near - short is
    the long-window penalty: what a model loses on the same tokens by reading them in a longer
    window than it trained on (before the extension), or no longer loses (after it). far - near
    (of the gain over the unigram baseline) says whether positions beyond the first stage's length,
    which only the extension trains, have caught up. Each comes with its standard error."""
    T1 = plan[0].seq_len
    windows = list(long_val_batches(data, meta, T_long, 2 * T1, n_docs)) if T_long > T1 else []
    if not windows:  # no validation document that long, or no window longer than the first stage's
        return {}
    short = [(inputs[:, :T1], labels[:, :T1], torch.tensor([0, T1], dtype=torch.int32), docs[:, :T1])
             for inputs, labels, _, docs in windows]
    sums = {**evaluate(model, windows, baseline, device, autocast, theta, split_at=T1),
            "short": evaluate(model, short, baseline, device, autocast, theta)["all"]}
    penalty, penalty_se = stats.difference(sums["near"], sums["short"], "loss")
    far_near, far_near_se = stats.difference(sums["far"], sums["near"], "gain")
    return dict({g: stats.summarize(v) for g, v in sums.items()}, penalty=penalty, penalty_se=penalty_se,
                far_near=far_near, far_near_se=far_near_se)


@torch.no_grad()
def evaluate(model, batches, baseline, device, autocast, theta, split_at=None):
    """Masked-LM loss and accuracy on the masked positions, next to two no-context baselines on
    exactly the same positions: the cross-entropy of the training unigram distribution and the
    accuracy of always guessing the most frequent training token. With split_at, positions before
    it ("near") and from it on ("far") are kept apart. Returns, per group, the per-document sums of
    these (stats.DocSums), from which stats.summarize computes the scores and their standard errors."""
    logp, top = baseline
    model.eval()
    sums = {}
    for inputs, labels, cu, docs in batches:
        with autocast:
            logits, _ = model(inputs.to(device), labels=labels.to(device), cu_seqlens=cu.to(device),
                              rope_theta_global=theta)
        sel = labels != -100
        target = labels[sel]
        loss = torch.nn.functional.cross_entropy(logits.float(), target.to(device), reduction="none").cpu()
        hit = logits.argmax(-1).cpu() == target
        pos = torch.arange(labels.shape[1]).expand_as(labels)[sel].numpy()
        group = np.full(len(target), "all") if split_at is None else np.where(pos < split_at, "near", "far")
        for g in set(group):
            m = torch.from_numpy(group == g)
            t = target[m]
            sums.setdefault(g, stats.DocSums()).add(docs[sel.numpy()][m.numpy()], loss=loss[m], acc=hit[m],
                                                     unigram_ce=-logp[t], top_acc=t == top)
    model.train()
    return dict(sorted(sums.items(), key=lambda kv: ("all", "near", "far").index(kv[0])))


# ------------------------------------------------------------------------------------------
# One optimiser step

def forward_backward(model, data, meta, cfg, procs, step, st, rate, autocast):
    """The gradient of one step's loss: the mean cross-entropy over every masked token of the global
    batch (all micro-batches of all processes), so a step means the same on 1 or 64 processes and with
    any grad_accum. Returns this process' part of that loss (on the device: one host synchronisation
    per step, not per micro-step)."""
    batches = [train_batch(data, meta, cfg, step, micro, procs.rank, procs.world, st.batch_size, st.seq_len, rate)
               for micro in range(cfg.grad_accum)]
    # every micro-batch's summed loss is divided by the masked tokens of the whole step; times the
    # number of processes, because DDP averages their gradients
    count = torch.tensor(sum(int((labels != -100).sum()) for _, labels, _ in batches), device=procs.device)
    if procs.ddp:
        torch.distributed.all_reduce(count)
    per_token = count.clamp(min=1) / procs.world
    loss_sum = torch.zeros((), device=procs.device)
    for micro, (inputs, labels, cu) in enumerate(batches):
        if procs.ddp:  # synchronise gradients only on the last micro-step
            model.require_backward_grad_sync = micro == cfg.grad_accum - 1
        with autocast:
            _, loss = model(inputs.to(procs.device), labels=labels.to(procs.device), cu_seqlens=cu.to(procs.device),
                            rope_theta_global=st.rope_theta, reduction="sum")
        loss = loss / per_token
        loss.backward()
        loss_sum += loss.detach()
    return loss_sum


def update(model, optimizer, loss, cfg, procs):
    """Clip the gradient and step, or skip the step if the loss or the gradient is not finite on
    any process. Returns (the step's loss, skipped)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    bad = (~(torch.isfinite(loss) & torch.isfinite(norm))).float()
    if procs.ddp:
        torch.distributed.all_reduce(bad)
        torch.distributed.all_reduce(loss, op=torch.distributed.ReduceOp.AVG)  # each part carries world / count
    skipped = bad.item() > 0
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), skipped


# ------------------------------------------------------------------------------------------

def check_settings(cfg, where="setting"):
    settings.check_types(cfg, where)
    settings.check(RULES, cfg, where + " {name}={v!r}: must be {allowed}")


def stages_ok(cfg):
    try:
        return all(type(st.seq_len) is int and st.seq_len >= 2 and type(st.batch_size) is int and st.batch_size >= 1
                   and isinstance(st.rope_theta, (int, float)) and st.rope_theta > 0 for st in stages(cfg))
    except (TypeError, ValueError):
        return False


RULES = settings.train_rules(list(PRESETS), NORMS, ATTN_BACKENDS, flash_attn_available, stages_ok)


def parse_args(argv):
    return settings.parse_config(argv, TrainConfig, __doc__)


@script("train.py")
def main(argv=None):
    # settings: defaults < config files < command line; a resume takes the checkpoint's for the rest
    cfg, explicit = parse_args(argv)
    check_settings(cfg)
    ckpt, ckpt_path = None, os.path.join(cfg.out_dir, "ckpt.pt")
    if cfg.resume:  # the checkpoint's settings, and which data it trained on
        ckpt, cfg = run_files.load_checkpoint(cfg, explicit, check_settings)
    meta, data = load_data(cfg.data_dir)  # before the output folder: a mistyped --data_dir is named first
    run_files.check_out_dir(cfg.out_dir, cfg.data_dir, cfg.resume, master=os.environ.get("RANK", "0") == "0")
    procs = runtime.start(cfg.device)
    cfg.device = procs.device
    plan = stages(cfg)
    uneven = next((i for i, st in enumerate(plan) if st.batch_size % procs.world), None)
    if uneven is not None:
        raise Refused(f"stage {uneven + 1}'s batch_size {plan[uneven].batch_size} cannot be shared by {procs.world} "
                      f"processes: a stage's batch is the global batch, and each process takes an equal share")
    torch.manual_seed(cfg.seed)

    # the model: the preset's shape, the data's vocabulary, and the last stage's length and RoPE theta
    # (the saved model is the one after the last stage; each stage passes its theta at every forward)
    train_len = max(st.seq_len for st in plan)
    longest = max(train_len, cfg.eval_long_len)  # the model's max_seq_len: training and long-document windows
    mcfg = config_from_preset(cfg.preset, vocab_size=meta["vocab_size"], norm=cfg.norm, attn_backend=cfg.attn_backend,
                              rope_theta_global=plan[-1].rope_theta, max_seq_len=longest, pad_id=meta["pad_id"],
                              cls_id=meta["cls_id"], sep_id=meta["sep_id"], mask_id=meta["mask_id"])
    if len(data["train"][0]) <= train_len:
        raise Refused(f"{cfg.data_dir}: the training split has {len(data['train'][0])} tokens, too few for windows of "
                      f"{train_len}")
    if ckpt is not None:
        run_files.check_checkpoint_fits(ckpt, ckpt_path, mcfg, meta)
    model = CMBert(mcfg)
    logp = model.init_unigram_prior(np.asarray(meta["unigram_counts"], np.int64))  # counted by prepare.py
    baseline = (logp, int(logp.argmax()))  # validation's no-context baselines: that unigram and its top token
    model.to(procs.device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr_max, (cfg.beta1, cfg.beta2), fused=True,
                                           embedding_lr_scale=cfg.embedding_lr_scale)
    step = run_files.restore_checkpoint(ckpt, ckpt_path, model, optimizer) if ckpt is not None else 0
    raw_model, model = model, runtime.wrap(model, cfg.compile, procs)
    try:
        cfg.dtype = runtime.resolve_dtype(procs.device, cfg.dtype)
    except ValueError as e:
        raise Refused(f"--dtype: {e}")
    autocast = runtime.autocast(procs.device, cfg.dtype)
    peak_flops = runtime.device_peak_flops(procs.device, torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32) \
        if procs.master else None
    log_path, code = os.path.join(cfg.out_dir, "log.jsonl"), runtime.code_version()
    if procs.master:
        run_files.start_log(log_path, step if ckpt is not None else None, code, run_files.settings_row(cfg),
                            tracker=cfg.tracker)
        if ckpt is not None:  # repair: model files that are not those written with ckpt.pt are rewritten
            run_files.repair_model_files(cfg, raw_model, meta, ckpt)
        print(f"model: {raw_model.num_params() / 1e6:.2f}M parameters ({raw_model.num_params(False) / 1e6:.2f}M "
              f"without embeddings), {mcfg.n_layer} layers x {mcfg.n_embd}; data: {meta['train_tokens']:,} "
              f"train tokens; {procs.world} process(es) on {procs.device}, {cfg.dtype}")
        run_files.print_plan(plan, cfg.grad_accum, procs.world)

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (procs.master and cfg.progress), unit="step",
               dynamic_ncols=True)
    t_start, tokens_seen, bad_steps, stage_now, results, long_results = time.time(), 0, 0, None, None, None
    T_eval, B_eval, T_long = plan[0].seq_len, plan[0].batch_size, cfg.eval_long_len or plan[-1].seq_len
    while step < cfg.max_steps:
        # where in the recipe we are: the stage (window length, batch, RoPE theta), learning rate, masking rate
        stage, st = stage_at(step, plan)
        if stage != stage_now and stage > 0 and procs.master:  # a switch, or a resume in a later stage
            tqdm.write(f"step {step}: stage {stage + 1}, sequence length {st.seq_len}, {st.batch_size} sequence(s) "
                       f"per micro-step, global RoPE theta {st.rope_theta:g}")
        stage_now = stage
        lr, rate = learning_rate(step, cfg), mask_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        t0 = time.time()
        # forward and backward on whole-word-masked packed windows, then clip and step (or skip a
        # non-finite step; several in a row stop the run with the last good checkpoint intact)
        loss, skipped = update(model, optimizer, forward_backward(model, data, meta, cfg, procs, step, st, rate, autocast),
                               cfg, procs)
        bad_steps = bad_steps + 1 if skipped else 0
        if bad_steps >= cfg.max_bad_steps:
            bar.close()
            raise Refused(f"{bad_steps} non-finite steps in a row at step {step}; stopping. "
                          f"The last good checkpoint is {ckpt_path} (try a lower --lr_max)")
        step += 1
        n_tokens = st.batch_size * st.seq_len * cfg.grad_accum  # over all processes
        tokens_seen += n_tokens
        if not procs.master:
            continue
        # log the step
        tok_s = n_tokens / (time.time() - t0)
        mfu = raw_model.estimate_mfu(tok_s / procs.world, st.seq_len, peak_flops, rate)
        run_files.append_log(log_path, dict(step=step, tokens=step_tokens(step, plan, cfg.grad_accum),
                                            stage=stage + 1, seq_len=st.seq_len, lr=lr, mask_rate=round(rate, 6),
                                            loss=round(loss, 6), skipped=skipped, tok_s=round(tok_s)))
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", mask=f"{rate:.2f}", tok_s=f"{tok_s:,.0f}",
                        mfu=f"{mfu:.1%}" if mfu else "n/a")
        bar.update(1)
        last = step == cfg.max_steps
        # evaluate: masked-only validation windows; at each stage switch and at the end, long documents
        if step % cfg.eval_interval == 0 or last:
            results = stats.summarize(evaluate(raw_model, val_batches(data, meta, T_eval, cfg.eval_windows, B_eval),
                                               baseline, procs.device, autocast, st.rope_theta)["all"])
            run_files.log_val(log_path, step, results, T_eval)
        if any(step == s.first for s in plan[1:]) or last:  # what the context extension buys
            long_results = long_documents(raw_model, data, meta, plan, T_long, cfg.eval_long_docs, baseline,
                                          procs.device, autocast, st.rope_theta)
            if long_results:
                run_files.log_long(log_path, step, long_results, T_eval, T_long)
        # checkpoint: the model folder, then ckpt.pt; and the plot
        if step % cfg.ckpt_interval == 0 or last:
            run_files.save_checkpoint(cfg, raw_model, optimizer, step, mcfg, meta, code)
            plot_run(log_path, os.path.join(cfg.out_dir, "train.png"))
    bar.close()
    if procs.master:
        run_files.close_log(log_path)  # the tracker, if any, has every row
        run_files.print_summary(step, tokens_seen, time.time() - t_start, results, long_results, T_eval, T_long, cfg.out_dir)
        if cfg.demo:
            demo(raw_model, os.path.join(cfg.data_dir, "tokenizer.json"), procs.device)
    runtime.stop(procs)


if __name__ == "__main__":
    main()
