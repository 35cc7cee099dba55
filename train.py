"""
Pre-train Chinese ModernBERT with the paper's recipe: whole-word masking with a 15 -> 30 -> 15%
curriculum, a damped-cosine learning rate, and a 1,024 -> 8,192 sequence-length stage switch.

    python train.py                                   # the tiny CPU demo (config/tiny.py), ~8 minutes
    python train.py config/base.py --max_steps=2000   # a config file, then overrides
    torchrun --standalone --nproc_per_node=8 train.py config/paper_large.py
    python train.py --help                            # every setting with its default
"""
import ast, dataclasses, inspect, json, math, os, shutil, sys, time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from cmbert import CMBert, compile_seconds, config_from_preset, device_peak_flops, resolve_dtype


@dataclass
class TrainConfig:
    # data and output
    data_dir: str = "data/default"   # written by prepare.py
    out_dir: str = "out"
    # model (a preset of cmbert.py, plus the knobs a student may want to turn)
    preset: str = "tiny"
    norm: str = "rmsnorm"            # the paper's RMSNorm; "layernorm" = ModernBERT exactly (save_hf works)
    attn_backend: str = "auto"       # auto | flash | torch
    compile: bool = torch.cuda.is_available()  # torch.compile: on where there is a GPU (1.4-1.7x on an H100), off on CPU (compiling takes minutes there)
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
            sys.exit(f"train.py: error: unknown setting {name!r} in {where} (see --help)")
        typ = types[name]
        if typ is str:
            value = str(value)
        elif typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not typ:
            sys.exit(f"train.py: error: {where}: {name} must be {typ.__name__}, got {value!r}")
        values[name] = value

    for arg in argv:
        if arg in ("-h", "--help"):
            src = inspect.getsource(TrainConfig).split("\n", 2)[2]
            print(__doc__.strip() + "\n\nSettings (override with --name=value; booleans True/False):\n" + src)
            sys.exit(0)
        if arg.startswith("--"):
            name, eq, raw = arg[2:].partition("=")
            if not eq:
                sys.exit(f"train.py: error: {arg}: write settings as --name=value")
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
            sys.exit(f"train.py: error: {arg!r} is neither a config file nor --name=value")
    return TrainConfig(**values), set(values)


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

def load_data(data_dir):
    meta_path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(meta_path):
        sys.exit(f"train.py: error: {data_dir}: no meta.json (run prepare.py; a directory without it is incomplete)")
    with open(meta_path) as f:
        meta = json.load(f)
    data = {}
    for split in ("train", "val"):
        ids = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype="<u2", mode="r")
        flags = np.memmap(os.path.join(data_dir, f"{split}.words.bin"), dtype=np.uint8, mode="r")
        if len(ids) != len(flags) or len(ids) != meta[f"{split}_tokens"]:
            sys.exit(f"train.py: error: {data_dir}: {split}.bin / {split}.words.bin do not match meta.json")
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
    fig.savefig(out_png + ".tmp.png", dpi=110)
    os.replace(out_png + ".tmp.png", out_png)
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

    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    ckpt = None
    if cfg.resume:
        if not os.path.exists(ckpt_path):
            sys.exit(f"train.py: error: --resume=True but {ckpt_path} does not exist")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        saved = ckpt["config"]  # the run's own settings; only those given now override them
        cfg = TrainConfig(**{**saved, **{k: getattr(cfg, k) for k in explicit}, "device": cfg.device})
    torch.manual_seed(cfg.seed)

    meta, data = load_data(cfg.data_dir)
    mcfg = config_from_preset(cfg.preset, vocab_size=meta["vocab_size"], norm=cfg.norm,
                              attn_backend=cfg.attn_backend, rope_theta_global=cfg.rope_theta_stage1,
                              max_seq_len=max(cfg.seq_len, cfg.stage2_seq_len), pad_id=meta["pad_id"],
                              cls_id=meta["cls_id"], sep_id=meta["sep_id"], mask_id=meta["mask_id"])
    if len(data["train"][0]) <= max(cfg.seq_len, cfg.stage2_seq_len if cfg.stage2_start < 1 else 0):
        sys.exit(f"train.py: error: {cfg.data_dir}: train.bin has {len(data['train'][0])} tokens, "
                 f"too few for windows of {cfg.stage2_seq_len if cfg.stage2_start < 1 else cfg.seq_len}")
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
        if ckpt["model_config"]["vocab_size"] != meta["vocab_size"]:
            sys.exit(f"train.py: error: {cfg.data_dir}: vocabulary {meta['vocab_size']} differs from the checkpoint's")
        model.load_state_dict(ckpt["model"], strict=False)  # the tied decoder weight is not stored
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
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
        sys.exit(f"train.py: error: --dtype: {e}")
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    peak_flops = device_peak_flops(cfg.device, torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32) if master else None

    log_path = os.path.join(cfg.out_dir, "log.jsonl")
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        # a resumed run keeps the log only up to its checkpoint, so the log reads as one run
        kept = [l for l in open(log_path)] if ckpt is not None and os.path.exists(log_path) else []
        kept = [l for l in kept if json.loads(l)["step"] <= step]
        with open(log_path, "w") as f:
            f.writelines(kept)
        top_token = int(counts.argmax())
        p = counts[counts > 0] / counts.sum()
        unigram_entropy = float(-(p * np.log(p)).sum())
        print(f"model: {raw_model.num_params() / 1e6:.2f}M parameters ({raw_model.num_params(False) / 1e6:.2f}M "
              f"without embeddings), {mcfg.n_layer} layers x {mcfg.n_embd}; data: {meta['train_tokens']:,} "
              f"train tokens; {world} process(es) on {cfg.device}, {cfg.dtype}")

    def save_checkpoint():
        stage = stage_of(step, cfg)[0]
        state = dict(model=raw_model.state_dict_clean(), optimizer=optimizer.state_dict(), step=step, stage=stage,
                     config=dataclasses.asdict(cfg), model_config=dataclasses.asdict(mcfg),
                     rng=dict(torch=torch.get_rng_state(),
                              cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None),
                     data_position=dict(step=step, note="windows and masks are drawn from (seed, step, row)"))
        torch.save(state, ckpt_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)
        raw_model.save_pretrained(cfg.out_dir)
        shutil.copy(os.path.join(cfg.data_dir, "tokenizer.json"), os.path.join(cfg.out_dir, "tokenizer.json"))
        plot(log_path, os.path.join(cfg.out_dir, "train.png"), cfg, unigram_entropy)

    def log(row):
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")

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
                sys.exit(f"train.py: error: {bad_steps} non-finite steps in a row at step {step}; stopping. "
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
                save_checkpoint()
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
    main(sys.argv[1:])
