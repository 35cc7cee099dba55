"""
Benchmarks, each measured side by side with its reference in one run:

    python bench.py prepare --input CORPUS --text_field title,content
                                # the encode step on one core against the speed of its parts (NFKC,
                                # jieba, BPE) on the same text, then that text repeated into one big
                                # file encoded by 1 and 2 workers: speed-up and peak memory per worker
    python bench.py startup --input CORPUS
                                # train.py's start-up (a 2-step run) on datasets of ~10M, ~100M and
                                # >= 2B tokens: time and peak memory against corpus size
    python bench.py model       # a CMBert training step vs transformers' ModernBertForMaskedLM
    python bench.py gpu --out gpu.json
                                # the first minutes on a GPU: every attention backend against the
                                # exact rule, compiled = eager, then speed vs ModernBERT and MFU;
                                # one JSON, exit status 1 where a check fails
    python bench.py finetune    # a CLUE fine-tuning step (WSC-sized batch): eval_clue.py before vs now
    python bench.py masking     # whole-word masking vs transformers' DataCollatorForLanguageModeling
                                # (needs data/default from prepare.py)
"""
import argparse, json, math, os, shutil, subprocess, sys, tempfile, time, unicodedata

import torch


def corpus_text(args, path):
    """The corpus' documents as they are (not normalised), one a line (a document's line breaks become
    spaces), up to --text_bytes bytes, into `path`: the text every row of `bench.py prepare` works on.
    Without --input, the default corpus (People's Daily read as prepare.py reads it, then the reviews)."""
    import prepare
    from support import corpus
    files, readers = (corpus.resolve_inputs(args.input), {}) if args.input else prepare.default_corpus()
    fields = [f.strip() for f in args.text_field.split(",") if f.strip()]
    lines, size, doc = [], 0, []
    for part, last in corpus.read_documents(files, fields, "utf-8", "line", prepare.READ_BYTES, readers):
        doc.append(part)
        if last:
            line, doc = "".join(doc).replace("\n", " "), []
            size += len(line.encode("utf-8")) + 1
            if size > args.text_bytes:
                break
            lines.append(line)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    return lines


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def encode_run(text, out, tok, args, *opts, workers=1):
    """prepare.py's encode step alone (the vocabulary given) on `text`, every copy of a document kept
    (so it encodes what the parts are timed on), in a fresh process: its wall time and peak memory,
    and its done records in slice order (each with the seconds its slice took in its worker, the
    worker's peak memory, and its shards)."""
    common = ["--tokenizer", tok, "--keep_duplicates", *opts]
    run_measured(prepare_cmd(text, out, args, "--step", "vocab", "--overwrite", *common))
    wall, peak, _, _ = run_measured(prepare_cmd(text, out, args, "--step", "encode", "--workers", workers, "--world", 1,
                                                *common))
    shards = os.path.join(out, "shards")
    done = [json.load(open(os.path.join(shards, f))) for f in sorted(os.listdir(shards)) if f.startswith("done-")]
    return wall, peak, done


def bench_prepare(args):
    """The encode step against its parts, then one big file on several workers. First the parts alone,
    in this process, on one core, on the corpus text: NFKC (unicodedata), segmentation (rjieba.cut),
    BPE with the tokenizer's encode_batch (ids and offsets, one thread) and with encode_batch_fast
    (ids only, what the encode step calls); then prepare.py's encode step on the same text with one
    worker. Then that text repeated into one file of >= --scale_to bytes, encoded with each of
    --workers_list: the speed-up over the first, the best one the slices allow, and peak memory per
    worker; every worker count must give the same shards (the fingerprint of their list)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: the rows compare one core with one core
    import prepare
    from support.dataset import fingerprint
    root = os.path.abspath(os.path.join(args.bench_dir, "prepare"))
    os.makedirs(root, exist_ok=True)
    text = os.path.join(root, "text.txt")
    lines = corpus_text(args, text)
    vocab = os.path.join(root, "vocab")
    t_vocab = run_measured(prepare_cmd(text, vocab, args, "--step", "vocab", "--overwrite"))[0]
    tok_path = os.path.join(vocab, "tokenizer.json")
    prepare.init_worker(open(tok_path, encoding="utf-8").read(), "rjieba")  # the tokenizer as a worker holds it
    tok, cut = prepare._worker["tok"], prepare._worker["cut"]

    normed = []
    t_nfkc = timed(lambda: normed.extend(t for t in (unicodedata.normalize("NFKC", x).strip() for x in lines) if t))
    n_chars = sum(map(len, normed))
    batches, batch, size = [], [], 0  # chunks of --chunk_chars characters, as the encode step batches them
    for t in normed:
        batch.append(t)
        size += len(t)
        if size >= 1 << 18:
            batches.append(batch)
            batch, size = [], 0
    batches.append(batch)
    t_cut = timed(lambda: [cut(t) for t in normed])
    t_bpe = timed(lambda: [tok.encode_batch(b, add_special_tokens=False) for b in batches])
    t_fast = timed(lambda: [tok.encode_batch_fast(b, add_special_tokens=False) for b in batches])
    wall, _, done = encode_run(text, os.path.join(root, "one"), tok_path, args)
    t_enc = sum(d["seconds"] for d in done)
    rate = lambda t: f"{t:8.2f} {n_chars / t / 1e6:10.3f}"  # noqa: E731
    print(f"{os.path.getsize(text) / 1e6:.1f} MB of text, {len(normed):,} documents, {n_chars:,} characters; "
          f"vocabulary step {t_vocab:.1f} s (not in the rows)")
    print(f"{'one core, the same text':55s} {'seconds':>8s} {'M chars/s':>10s}")
    for label, t in [("NFKC (unicodedata.normalize)", t_nfkc), ("segmentation (rjieba.cut)", t_cut),
                     ("BPE encode_batch (ids + offsets)", t_bpe), ("BPE encode_batch_fast (ids only)", t_fast),
                     ("the parts: NFKC + rjieba + encode_batch", t_nfkc + t_cut + t_bpe),
                     ("the parts: NFKC + rjieba + encode_batch_fast", t_nfkc + t_cut + t_fast),
                     ("prepare.py encode step, 1 worker (in the worker)", t_enc),
                     ("prepare.py encode step, 1 worker (wall, with start-up)", wall)]:
        print(f"{label:55s} {rate(t)}")
    print(f"encode step / parts speed: {(t_nfkc + t_cut + t_bpe) / t_enc:.0%} (parts with encode_batch), "
          f"{(t_nfkc + t_cut + t_fast) / t_enc:.0%} (with encode_batch_fast); the step encoded "
          f"{sum(d['stats']['chars'] for d in done):,} characters")

    copies = max(1, math.ceil(args.scale_to / os.path.getsize(text)))
    big = os.path.join(root, f"big_x{copies}.txt")
    if not os.path.exists(big):
        with open(text, "rb") as f:
            block = f.read()
        with open(big + ".part", "wb") as f:
            for _ in range(copies):
                f.write(block)
        os.replace(big + ".part", big)
    print(f"\none file: the text x {copies} = {os.path.getsize(big) / 1e6:,.0f} MB, --slice_bytes {args.slice_bytes} "
          f"(every copy kept and encoded)")
    print(f"{'workers':>8s} {'slices':>7s} {'encode s':>9s} {'M chars/s':>10s} {'speed-up':>9s} {'best the slices allow':>22s} "
          f"{'peak MB/worker':>15s} {'peak MB, all':>13s}")
    prints, first = set(), None
    for w in args.workers_list:
        out = os.path.join(root, f"big_w{w}")
        wall, peak, done = encode_run(big, out, tok_path, args, "--slice_bytes", args.slice_bytes, workers=w)
        prints.add(fingerprint({split: [s for d in done for s in d["shards"][split]] for split in ("train", "val")}))
        sizes = sorted((d["slice"]["size"] for d in done), reverse=True)
        loads = [0] * w  # the pool's order: largest first, each to the first free worker
        for n in sizes:
            loads[loads.index(min(loads))] += n
        first = first or wall
        print(f"{w:8d} {len(done):7d} {wall:9.1f} {sum(d['stats']['chars'] for d in done) / wall / 1e6:10.3f} "
              f"{first / wall:9.2f} {sum(sizes) / max(loads):22.2f} {max(d['peak_rss_mb'] for d in done):15,.0f} "
              f"{peak:13,.0f}")
        shutil.rmtree(out)
    if len(prints) != 1:
        sys.exit("bench.py: error: the worker counts gave different datasets")


# ------------------------------------------------------------------------------------------
# Data at scale: prepare.py's encode step, and train.py's start-up, against the size of the corpus

ROOT = os.path.dirname(os.path.abspath(__file__))


LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()  # from this small process, not from bench.py: Linux carries a parent's peak memory into its child
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump(dict(code=os.waitstatus_to_exitcode(status), wall=time.perf_counter() - t0, peak_mb=usage.ru_maxrss / 1024), f)
"""


def run_measured(cmd, log=None):
    """Run a command as a user does, in a fresh process. Returns (wall seconds, peak resident memory
    in MB of the process or of the largest process it waited for (Linux's wait4), seconds until
    `log` holds a training step's row, the output)."""
    with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "out"), "w+") as out:
        report = os.path.join(tmp, "report.json")
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, report, *map(str, cmd)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
        first = None
        while proc.poll() is None:
            if log and first is None and os.path.exists(log):
                with open(log) as f:
                    first = time.perf_counter() - t0 if '"loss"' in f.read() else None
            time.sleep(0.01)
        out.seek(0)
        text = out.read()
        result = json.load(open(report)) if os.path.exists(report) else dict(code=proc.returncode)
    if result["code"]:
        sys.exit(f"bench.py: error: {' '.join(map(str, cmd))} failed:\n{text[-3000:]}")
    return result["wall"], result["peak_mb"], first, text


def copies_of(files, dest, n):
    """`n` copies of the input files as symbolic links, dest/copy00000/<their paths below their
    common folder>, ...: prepare.py reads them as n times the corpus (exact copies in other files
    are not removed: de-duplication is within a slice of an input file)."""
    top = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0])
    for k in range(n):
        for f in files:
            link = os.path.join(dest, f"copy{k:05d}", os.path.relpath(f, top))
            if not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(f, link)
    return dest


def prepare_cmd(inputs, out, args, *more):
    return [sys.executable, "prepare.py", "--input", inputs, "--out_dir", out, "--text_field", args.text_field,
            "--quiet", *more]


def scaled_dataset(base, copies, args, root, files):
    """A real dataset of `copies` times the base corpus: the vocabulary step on the copied inputs (the
    base's tokenizer, validation capped at the base's size so that validation costs the same at
    every size), each slice's shards and done record copied from the base's encoding of the same
    slice of the same file (byte for byte what the encode step writes for it: a slice's output
    depends on that slice alone), then the real finalize step, which reads every shard and checks
    its sha256."""
    out = os.path.join(root, f"x{copies}")
    if os.path.exists(os.path.join(out, "meta.json")):
        return out  # built, and checked by its finalize step, before
    inputs = copies_of(files, os.path.join(root, f"inputs_{copies}"), copies)
    base_meta = json.load(open(os.path.join(base, "meta.json")))
    opts = ["--tokenizer", os.path.join(base, "tokenizer.json"), "--max_val_tokens", base_meta["val_tokens"]]
    run_measured(prepare_cmd(inputs, out, args, "--step", "vocab", "--overwrite", *opts))
    plan, base_plan = (json.load(open(os.path.join(d, "plan.json"))) for d in (out, base))
    if plan["val_threshold"] != base_plan["val_threshold"]:
        sys.exit("bench.py: error: the copies would be split differently from the base corpus")
    base_dir = os.path.join(root, "inputs_1", "copy00000")
    base_file = {os.path.relpath(s, base_dir): i for i, s in enumerate(base_plan["settings"]["sources"])}
    base_slice = {json.dumps(span, sort_keys=True): k for k, span in enumerate(base_plan["slices"])}
    for i, span in enumerate(plan["slices"]):
        source = plan["settings"]["sources"][span["file"]]
        rel = os.path.relpath(source, inputs).split(os.sep, 1)[1]  # below copyNNNNN/
        j = base_slice[json.dumps({**span, "file": base_file[rel]}, sort_keys=True)]
        record = json.load(open(os.path.join(base, "shards", f"done-{j:06d}.json")))
        for split in ("train", "val"):
            for s in record["shards"][split]:
                name = s["name"].replace(f"-{j:06d}-", f"-{i:06d}-")
                for ext in (".bin", ".words.bin"):
                    shutil.copyfile(os.path.join(base, "shards", s["name"] + ext), os.path.join(out, "shards", name + ext))
                s["name"] = name
        stat = os.stat(source)
        record.update(input=source, slice=span, input_size=stat.st_size, input_mtime_ns=stat.st_mtime_ns)
        with open(os.path.join(out, "shards", f"done-{i:06d}.json"), "w") as f:
            json.dump(record, f)
    run_measured(prepare_cmd(inputs, out, args, "--step", "finalize", *opts))
    return out


def bench_startup(args):
    """train.py's start-up against corpus size: the base corpus prepared for real, then datasets of
    about each of --sizes training tokens made of copies of it (scaled_dataset). Each is timed in a
    fresh process: a 2-step run (one stage of 2 x 1,024 tokens, 2 validation windows, no compile, no
    demo), its time to the first step, its wall time and its peak resident memory."""
    from support import corpus
    root = os.path.abspath(os.path.join(args.bench_dir, "startup"))
    files = corpus.resolve_inputs(args.input)
    base = os.path.join(root, "x1")
    if not os.path.exists(os.path.join(base, "meta.json")):
        inputs = copies_of(files, os.path.join(root, "inputs_1"), 1)
        run_measured(prepare_cmd(inputs, base, args, "--overwrite", "--workers", args.workers))
    base_tokens = json.load(open(os.path.join(base, "meta.json")))["train_tokens"]
    print(f"base corpus: {base_tokens:,} training tokens; {os.cpu_count()} cores")
    print(f"{'dataset':>10s} {'train tokens':>15s} {'shards':>7s} {'on disk GB':>11s} {'first step s':>13s} "
          f"{'2-step run s':>13s} {'peak RSS MB':>12s}")
    for size in args.sizes:
        copies = max(1, math.ceil(size / base_tokens))
        data = base if copies == 1 else scaled_dataset(base, copies, args, root, files)
        meta = json.load(open(os.path.join(data, "meta.json")))
        out = os.path.join(root, "run")
        shutil.rmtree(out, ignore_errors=True)
        wall, peak, first, _ = run_measured(
            [sys.executable, "train.py", f"--data_dir={data}", f"--out_dir={out}", "--max_steps=2",
             "--stages=[(0, 1024, 2, 8e4)]", "--eval_windows=2", "--compile=False", "--demo=False", "--progress=False"],
            log=os.path.join(out, "log.jsonl"))
        disk = sum(os.path.getsize(os.path.join(data, "shards", f)) for f in os.listdir(os.path.join(data, "shards")))
        print(f"{f'x {copies}':>10s} {meta['train_tokens']:15,d} {len(meta['shards']['train']) + len(meta['shards']['val']):7d} "
              f"{disk / 1e9:11.2f} {first or float('nan'):13.1f} {wall:13.1f} {peak:12,.0f}")


# ------------------------------------------------------------------------------------------
# Model: one full training step (forward, backward, AdamW), same shape, batch and labels

def build(which, preset, device, backend="auto", hf_attn="sdpa"):
    """CMBert (norm='layernorm', so both compute the same function) or transformers' ModernBERT
    with sparse prediction and `hf_attn` attention (sdpa, or flash_attention_2 where installed).
    Both get the same AdamW (fused on CUDA)."""
    from cmbert import CMBert, config_from_preset
    cfg = config_from_preset(preset, norm="layernorm", attn_backend=backend)
    if which == "cmbert":
        model = CMBert(cfg)
    else:
        from transformers import ModernBertConfig, ModernBertForMaskedLM
        hf = ModernBertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                              num_attention_heads=cfg.n_head, intermediate_size=cfg.intermediate_size,
                              local_attention=cfg.local_window, global_attn_every_n_layers=cfg.global_every,
                              max_position_embeddings=cfg.max_seq_len, sparse_prediction=True,
                              pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3,
                              attn_implementation=hf_attn)
        model = ModernBertForMaskedLM(hf)
    model.to(device)
    return model, cfg, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")


def packed_cu_seqlens(B, T, mean=400, seed=0):
    """Document boundaries of a packed (B, T) batch: lengths drawn uniformly from [50, 2 * mean - 50]
    (mean ~400, like pre-training text), every row edge also a boundary."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(50, 2 * mean - 50, (2 * B * T // mean + 1,), generator=g)
    inner = lens.cumsum(0)
    return torch.unique(torch.cat([torch.zeros(1, dtype=torch.long), inner[inner < B * T], torch.arange(1, B + 1) * T]))


def make_step(which, model, opt, B, T, vocab, device, packed=False, dtype="float32"):
    """One training step on a fixed random batch, 30% of tokens labelled. packed=True feeds the
    rows as packed documents (cu_seqlens, CMBert only); otherwise one full document per row. bf16
    autocast on CUDA (and on a CPU when dtype says so), as train.py trains."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (B, T), generator=g).to(device)
    labels = torch.where(torch.rand(B, T, generator=g) < 0.3, torch.randint(5, vocab, (B, T), generator=g), -100).to(device)
    mask = torch.ones_like(ids)
    cu = packed_cu_seqlens(B, T).to(device) if packed else None
    autocast = torch.autocast(torch.device(device).type, torch.bfloat16,
                              enabled=device == "cuda" or dtype == "bfloat16")

    def step():
        with autocast:
            loss = model(ids, labels=labels, cu_seqlens=cu)[1] if which == "cmbert" else \
                model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def rss_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def peak_child(which, B, T):
    """In a fresh process: resident memory added by model + optimiser + one training step (MB)."""
    base = rss_mb("VmRSS:")
    model, cfg, opt = build(which, "tiny", "cpu")
    step = make_step(which, model, opt, B, T, cfg.vocab_size, "cpu")
    step()
    print(json.dumps({"peak_mb": rss_mb("VmHWM:") - base}))


def matmul_flops(device, dtype, n=8192, reps=20):
    """The matmul rate this device actually reaches in `dtype` (n x n x n products on a GPU; on a
    CPU, runtime's measurement): the second MFU denominator, beside the datasheet's."""
    if torch.device(device).type != "cuda":
        from support.runtime import device_peak_flops
        return device_peak_flops(device, dtype)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return reps * 2 * n ** 3 / (time.perf_counter() - t)


def backends_here(device):
    """{attention backend: None if it can run here, else why not}."""
    from cmbert import flash_attn_available
    here = {"torch": None}
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
        here["flex"] = None
    except ImportError:
        here["flex"] = f"torch {torch.__version__} has no FlexAttention"
    here["flash"] = None if flash_attn_available() and device == "cuda" else "flash-attn is not installed or there is no CUDA device"
    return here


def dense_attention(q, k, v, doc, half):
    """The rule spelt out, in fp32: query i attends to key j iff both are in the same document (doc
    ids; -1 = padding, which sees padding) and, in a local layer, |i - j| <= half. q, k, v: (B, T, H, D)."""
    T = q.shape[1]
    i = torch.arange(T, device=q.device)
    allowed = doc[:, :, None] == doc[:, None, :]
    if half is not None:
        allowed = allowed & ((i[:, None] - i[None, :]).abs() <= half)
    scores = torch.einsum("bihd,bjhd->bhij", q.float(), k.float()) / q.shape[-1] ** 0.5
    return torch.einsum("bhij,bjhd->bihd", scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1), v.float())


def check_inputs(B, T, vocab, device, packed, seed=0):
    """A batch of B x T tokens, 30% labelled: packed documents (cu_seqlens), or one document per row
    with the second row half padding (attention_mask)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    labels = torch.where(torch.rand(B, T, generator=g) < 0.3, ids, -100)
    if packed:
        return dict(input_ids=ids.to(device), labels=labels.to(device), cu_seqlens=packed_cu_seqlens(B, T).to(device))
    mask = torch.ones_like(ids)
    mask[1:, T // 2:] = 0
    return dict(input_ids=ids.to(device), labels=torch.where(mask.bool(), labels, -100).to(device),
                attention_mask=mask.to(device))


TOLERANCE = {  # relative errors allowed: the kernels differ only in the order and precision of their sums
    "float32": dict(kernel=2e-3, loss=1e-4, grad=1e-3),
    "bfloat16": dict(kernel=3e-2, loss=1e-2, grad=5e-2),
}


def kernel_checks(device, dtype, B, T, here):
    """Each attention backend's output against dense_attention, on packed and padded rows, in local
    (window 128) and global layers: the layouts come from the model's own Encoder.layout."""
    import warnings
    from cmbert import Encoder, attention, config_from_preset
    out = []
    tol = TOLERANCE[dtype]["kernel"]
    for backend, why_not in here.items():
        for packed in (True, False):
            for window in (128, None):
                name = f"attention {backend} {'packed' if packed else 'padded'} {'local' if window else 'global'}"
                if backend == "flash" and dtype != "bfloat16":
                    why_not = why_not or "flash-attn computes in fp16 or bf16 only"
                if why_not:
                    out.append(dict(check=name, ok=None, skipped=why_not))
                    continue
                try:
                    enc = Encoder(config_from_preset("tiny", vocab_size=1024, attn_backend=backend)).to(device)
                    x = check_inputs(B, T, 1024, device, packed)
                    autocast = torch.autocast(torch.device(device).type, torch.bfloat16, enabled=dtype == "bfloat16")
                    with autocast:
                        lay = enc.layout(x["input_ids"], x.get("attention_mask"), x.get("cu_seqlens"))
                    g = torch.Generator(device=device).manual_seed(1)
                    q, k, v = (torch.randn(B, T, 4, 64, device=device, generator=g).to(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
                               for _ in range(3))
                    with torch.no_grad(), warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # flex without torch.compile on a CPU says it is slow
                        if lay.backend == "flash":
                            flat = [t.flatten(0, 1)[lay.keep] for t in (q, k, v)]
                            y = torch.zeros(B * T, 4, 64, device=device, dtype=q.dtype)
                            y[lay.keep] = attention(*flat, lay, window, 0.0)
                            y = y.view(B, T, 4, 64)
                        else:
                            y = attention(q, k, v, lay, window, 0.0)
                        ref = dense_attention(q, k, v, lay.doc, window // 2 if window else None)
                    valid = lay.doc >= 0
                    err = ((y.float() - ref)[valid].abs().max() / ref[valid].abs().max()).item()
                    out.append(dict(check=name, error=err, tolerance=tol, ok=err <= tol))
                except Exception as e:
                    out.append(dict(check=name, ok=False, failed=one_line_of(e)))
    return out


def one_line_of(e):
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


def loss_and_grads(model, x, dtype, device):
    model.zero_grad(set_to_none=True)
    with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=dtype == "bfloat16"):
        _, loss = model(**x, reduction="sum")
    loss.backward()
    return loss.detach().float(), [p.grad.detach().float().clone() for p in model.parameters() if p.grad is not None]


def differences(a, b):
    """Relative differences of two (loss, grads): of the loss, and of all gradients as one vector."""
    (la, ga), (lb, gb) = a, b
    num = sum(((x - y) ** 2).sum() for x, y in zip(ga, gb)) ** 0.5
    den = sum((y ** 2).sum() for y in gb) ** 0.5
    return (abs(la - lb) / abs(lb)).item(), (num / den).item()


def model_checks(device, dtype, B, T, here, compile_backend):
    """The whole training step's loss and gradients (the default RMSNorm model, the tiny preset's
    shape with a 1,024-token vocabulary): each
    backend eager against the torch backend eager (the reference), and each backend compiled
    (runtime.wrap, as train.py compiles) against itself eager. And whether the same step twice gives
    bitwise the same gradients, eager and compiled: not a failure where it does not, but it says
    whether a resumed run can continue bitwise on this device."""
    from cmbert import CMBert, config_from_preset
    from support.runtime import Processes, flex_trains_on, wrap
    tol = TOLERANCE[dtype]
    out, repeatable = [], {}
    torch.manual_seed(0)
    small = dict(vocab_size=1024)  # the vocabulary is not what is checked: a small one is quicker on a CPU
    base = CMBert(config_from_preset("tiny", attn_backend="torch", **small)).to(device)
    for packed in (True, False):
        x = check_inputs(B, T, base.cfg.vocab_size, device, packed)
        kind = "packed" if packed else "padded"
        reference = loss_and_grads(base, x, dtype, device)
        if packed:
            repeatable["torch eager"] = same_gradients(reference, loss_and_grads(base, x, dtype, device))
        for backend, why_not in here.items():
            if not why_not and backend == "flex" and not flex_trains_on(device):
                why_not = f"torch {torch.__version__}: FlexAttention has no backward pass on {device}"
            if backend == "flash" and dtype != "bfloat16":
                why_not = why_not or "flash-attn computes in fp16 or bf16 only"
            for compiled in ((False, True) if backend != "torch" else (True,)):  # torch eager is the reference
                name = f"model {backend}{' compiled' if compiled else ''} {kind}"
                if why_not or (compiled and compile_backend == "none"):
                    out.append(dict(check=name, ok=None, skipped=why_not or "--compile_backend none"))
                    continue
                try:
                    torch._dynamo.reset()
                    model = CMBert(config_from_preset("tiny", attn_backend=backend, **small)).to(device)
                    model.load_state_dict(base.state_dict())
                    against = loss_and_grads(model, x, dtype, device) if compiled else reference
                    if compiled:
                        model = wrap(model, True, Processes(device=device), backend=compile_backend)
                    got = loss_and_grads(model, x, dtype, device)
                    d_loss, d_grad = differences(got, against)
                    out.append(dict(check=name, loss_error=d_loss, grad_error=d_grad, tolerance=tol,
                                    ok=d_loss <= tol["loss"] and d_grad <= tol["grad"],
                                    against=f"{backend} eager" if compiled else "torch eager"))
                    if backend == "torch" and packed:
                        repeatable["torch compiled"] = same_gradients(got, loss_and_grads(model, x, dtype, device))
                except Exception as e:
                    out.append(dict(check=name, ok=False, failed=one_line_of(e)))
    torch._dynamo.reset()
    return out, repeatable


def same_gradients(a, b):
    return all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def gpu_runs(here):
    """(label, which, attention backend, compiled, packed) for every configuration the speed table has."""
    runs = []
    for backend in [b for b, why_not in here.items() if not why_not]:
        for compiled in ([False, True] if backend != "flex" else [True]):  # flex is only fast compiled
            for packed in (False, True):
                label = f"cmbert {backend}{' compiled' if compiled else ''}{' packed' if packed else ''}"
                runs.append((label, "cmbert", backend, compiled, packed))
    from cmbert import flash_attn_available
    for attn in ["sdpa"] + (["flash_attention_2"] if here["flash"] is None and flash_attn_available() else []):
        runs.append((f"ModernBERT {attn}", "modernbert", attn, False, False))
    return runs


def speed_rows(args, device, dtype, here, peak_measured, peak_datasheet):
    """A full training step (forward, backward, AdamW) of the preset: cmbert (each backend, eager and
    compiled, full rows and packed documents) against transformers' ModernBERT, same shapes."""
    from support.runtime import Processes, compile_seconds, flex_trains_on, wrap
    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = []
    for B, T in args.shapes:
        shape_rows = []
        for label, which, backend, compiled, packed in gpu_runs(here):
            if args.only and not any(o in label for o in args.only.split(",")):
                continue
            if which == "cmbert" and backend == "flex" and not flex_trains_on(device):
                continue
            row = dict(label=label, B=B, T=T)
            try:
                torch._dynamo.reset()
                if cuda:
                    torch.cuda.empty_cache()
                model, cfg, opt = build(which, args.preset, device, backend if which == "cmbert" else "torch",
                                        hf_attn=backend if which == "modernbert" else "sdpa")
                flops = model.flops_per_token(T) if which == "cmbert" else None
                if compiled:
                    model = wrap(model, True, Processes(device=device), backend=args.compile_backend)
                step = make_step(which, model, opt, B, T, cfg.vocab_size, device, packed, dtype)
                c0 = compile_seconds()
                for _ in range(args.warmup):
                    step()
                sync()
                row["compile_s"] = compile_seconds() - c0
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                c0, t = compile_seconds(), time.perf_counter()
                for _ in range(args.steps):
                    step()
                sync()
                row["tok_s"] = B * T * args.steps / (time.perf_counter() - t)
                row["compile_s_timed"] = compile_seconds() - c0  # > 0: it recompiled while timed (then tok_s is low)
                row["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
                row["flops_per_token"] = flops
                del model, opt, step
            except Exception as e:
                row["failed"] = one_line_of(e)
            shape_rows.append(row)
        ref = next((r.get("tok_s") for r in shape_rows if r["label"] == "ModernBERT sdpa"), None)
        flops = next((r["flops_per_token"] for r in shape_rows if r.get("flops_per_token")), None)  # the same model
        for r in shape_rows:
            if "tok_s" in r:
                r["flops_per_token"] = flops
                r["mfu"] = flops * r["tok_s"] / peak_datasheet if flops and peak_datasheet else None
                r["mfu_measured"] = flops * r["tok_s"] / peak_measured if flops and peak_measured else None
                r["vs_modernbert"] = r["tok_s"] / ref if ref else None
        rows += shape_rows
    return rows


def bench_gpu(args):
    """The first minutes on a GPU, one command: is every attention backend the exact rule, is the
    compiled step the eager one, how fast against transformers' ModernBERT and at what MFU. One JSON
    (--out); a check that fails is one line and exit status 1, after the JSON is written."""
    from support.errors import Refused
    from support.files import write_json
    from support.runtime import device_peak_flops, pick_device, resolve_dtype
    device = pick_device(args.device)
    dtype = resolve_dtype(device, args.dtype)
    here = backends_here(device)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}, torch {torch.__version__}, {dtype}; attention backends: "
          + ", ".join(f"{b}" + (f" (not here: {w})" if w else "") for b, w in here.items()))
    B, T = args.check_shape
    checks = kernel_checks(device, dtype, B, T, here)
    more, repeatable = model_checks(device, dtype, B, T, here, args.compile_backend)
    checks += more
    for c in checks:
        verdict = "skipped: " + c["skipped"] if c["ok"] is None else "ok" if c["ok"] else "FAILED"
        detail = c.get("failed") or (f"error {c['error']:.1e}" if "error" in c else
                                     f"loss {c['loss_error']:.1e}, gradients {c['grad_error']:.1e}" if "loss_error" in c else "")
        print(f"{c['check']:40s} {detail:40s} {verdict}")
    for what, same in repeatable.items():
        print(f"{what}: the same step twice gives {'bitwise the same' if same else 'other'} gradients")
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    peak_measured = matmul_flops(device, torch_dtype) if args.steps else None
    peak_datasheet = device_peak_flops(device, torch_dtype) if device.startswith("cuda") else None
    rows = speed_rows(args, device, dtype, here, peak_measured, peak_datasheet) if args.steps else []
    if rows:
        print(f"{args.preset} preset, {dtype}, AdamW, 30% labelled, {args.steps} timed steps after {args.warmup} warm-up; packed = "
              f"documents of mean ~400 tokens; MFU against the datasheet peak"
              f"{f' ({peak_datasheet / 1e12:.0f} TFLOP/s)' if peak_datasheet else ' (none for this device)'} and against "
              f"the measured matmul rate ({peak_measured / 1e12:.1f} TFLOP/s)")
        print(f"{'':34s} {'B x T':>9s} {'tok/s':>10s} {'MFU':>6s} {'MFU m.':>7s} {'peak GB':>8s} {'compile s':>10s} "
              f"{'vs ModernBERT':>14s}")
        fmt = lambda v, f: format(v, f) if v is not None else "n/a"  # noqa: E731
        for r in rows:
            shape = f"{r['B']} x {r['T']}"
            if "failed" in r:
                print(f"{r['label']:34s} {shape:>9s} FAILED: {r['failed']}")
                continue
            print(f"{r['label']:34s} {shape:>9s} {r['tok_s']:10,.0f} {fmt(r['mfu'], '6.1%'):>6s} "
                  f"{fmt(r['mfu_measured'], '7.1%'):>7s} {fmt(r['peak_gb'], '8.1f'):>8s} {r['compile_s']:10.0f} "
                  f"{fmt(r['vs_modernbert'], '13.2f')}x" + ("  (recompiled while timed)" if r["compile_s_timed"] else ""))
    failed = [c for c in checks if c["ok"] is False] + [r for r in rows if "failed" in r]
    report = dict(device=name, torch=torch.__version__, dtype=dtype, preset=args.preset, check_shape=[B, T],
                  compile_backend=args.compile_backend, backends={b: w or "available" for b, w in here.items()},
                  ok=not failed, checks=checks, bitwise_repeatable=repeatable, peak_flops_datasheet=peak_datasheet,
                  peak_flops_measured=peak_measured, rows=rows)
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    if failed:
        first = failed[0]
        raise Refused(f"bench.py: error: {first.get('check') or first.get('label')} failed "
                      f"({first.get('failed') or 'beyond its tolerance'}); {len(failed)} of "
                      f"{len(checks) + len(rows)} checks and rows failed" + (f", see {args.out}" if args.out else ""))
    return report


def bench_model(args):
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else f'cpu, {torch.get_num_threads()} threads'}, "
          f"torch {torch.__version__}")
    if device == "cuda":
        return bench_gpu(args)
    rows = []
    for B, T in [(4, 1024), (1, 8192)]:
        built = {w: build(w, "tiny", "cpu") for w in ["cmbert", "modernbert"]}
        steps = {w: make_step(w, m, o, B, T, c.vocab_size, "cpu") for w, (m, c, o) in built.items()}
        times = {w: [] for w in steps}
        for w in steps:
            steps[w]()  # warm-up
        for _ in range(args.steps):  # interleaved, so drift in machine speed hits both alike
            for w, step in steps.items():
                t = time.perf_counter()
                step()
                times[w].append(time.perf_counter() - t)
        tok_s = {w: B * T / sorted(ts)[len(ts) // 2] for w, ts in times.items()}
        peak = {w: json.loads(subprocess.run([sys.executable, __file__, "_peak", w, str(B), str(T)],
                                             capture_output=True, text=True, check=True).stdout)["peak_mb"]
                for w in steps}
        rows.append((B, T, tok_s, peak))
        del built, steps
    print("tiny preset (4 x 256, I=384, V=32,000, window 128), full training step, 30% labelled, "
          f"median of {args.steps}")
    print(f"{'B x T':>10s} {'CMBert tok/s':>13s} {'ModernBERT tok/s':>17s} {'speed-up':>9s} "
          f"{'CMBert peak MB':>15s} {'ModernBERT peak MB':>19s}")
    for B, T, tok_s, peak in rows:
        print(f"{f'{B} x {T}':>10s} {tok_s['cmbert']:13,.0f} {tok_s['modernbert']:17,.0f} "
              f"{tok_s['cmbert'] / tok_s['modernbert']:8.2f}x {peak['cmbert']:15,.0f} {peak['modernbert']:19,.0f}")


# ------------------------------------------------------------------------------------------
# Masking: our whole-word masking vs transformers' collator on the same token batch, and the
# share of a training step that data loading + masking take

# ------------------------------------------------------------------------------------------
# Fine-tuning: one CLUE fine-tuning step on a WSC-sized batch, as eval_clue.py ran it before and now

def bench_finetune(args):
    """ms per fine-tuning step (batch 8, CLUEWSC2020 row lengths: median 48 tokens, 90th percentile
    73) of the tiny preset's classifier, for eval_clue.py's step as first written (a Python loop
    building each padded batch, the loss read back to the host and shown every step) and as it is now
    (a slice of one pre-padded array, the loss read back every 50 steps). Same weights, same batch,
    interleaved rounds; then where the current step's time goes."""
    import copy
    import numpy as np
    from tqdm import tqdm
    import eval_clue
    from cmbert import CMBertForSequenceClassification, config_from_preset
    torch.manual_seed(0)
    g = np.random.default_rng(0)
    base = CMBertForSequenceClassification(config_from_preset("tiny"), num_labels=2)
    print(f"cpu, {torch.get_num_threads()} threads, torch {torch.__version__}; tiny preset classifier, fp32, AdamW fused")
    print(f"{'batch (token lengths)':34s} {'before ms':>10s} {'after ms':>9s} {'speed-up':>9s} {'max |loss diff|':>16s}")
    for lengths in ([44, 45, 46, 47, 48, 48, 49, 50], [66, 67, 68, 69, 70, 71, 72, 73]):
        seqs = [[2] + list(g.integers(5, 32000, n - 2)) + [3] for n in lengths]
        y = torch.tensor([0, 1] * 4)
        padded, idx = eval_clue.Padded(seqs), np.arange(len(seqs))
        runs = {}
        for name in ("before", "after"):
            model = copy.deepcopy(base).train()
            opt = model.configure_optimizers(0.01, 2e-5, (0.9, 0.98), fused=True)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
            runs[name] = dict(model=model, opt=opt, sched=sched, times=[], losses=[],
                              bar=tqdm(total=10 ** 6, disable=True))

        def before(r):  # eval_clue.py as first written
            T = max(map(len, seqs))
            ids, mask = torch.zeros(len(seqs), T, dtype=torch.long), torch.zeros(len(seqs), T, dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
            loss = r["model"](ids, mask, labels=y)[1]
            eval_clue.train_step(r["model"], r["opt"], r["sched"], loss)
            r["bar"].update(1)
            r["bar"].set_postfix(loss=f"{loss.item():.3f}")
            return loss

        def after(r):
            loss = r["model"](*padded.batch(idx, "cpu"), labels=y)[1]
            eval_clue.train_step(r["model"], r["opt"], r["sched"], loss)
            r["bar"].update(1)
            return loss
        for step in range(2 + args.steps):
            for name, fn in (("before", before), ("after", after)):
                t = time.perf_counter()
                loss = fn(runs[name])
                runs[name]["losses"].append(loss.item())  # outside the timed region
                if step >= 2:  # two warm-up steps
                    runs[name]["times"].append(time.perf_counter() - t)
        ms = {k: 1e3 * sorted(r["times"])[len(r["times"]) // 2] for k, r in runs.items()}
        diff = max(abs(a - b) for a, b in zip(runs["before"]["losses"], runs["after"]["losses"]))
        print(f"{str(lengths):34s} {ms['before']:10.1f} {ms['after']:9.1f} {ms['before'] / ms['after']:8.2f}x {diff:16.2e}")

    # where the current step's time goes (last batch), median of the same number of steps
    r = runs["after"]
    parts = {k: [] for k in ("batch", "forward", "backward", "clip + AdamW + schedule")}
    for _ in range(args.steps):
        t0 = time.perf_counter()
        ids, mask = padded.batch(idx, "cpu")
        t1 = time.perf_counter()
        loss = r["model"](ids, mask, labels=y)[1]
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(r["model"].parameters(), 1.0)
        r["opt"].step()
        r["sched"].step()
        r["opt"].zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[k].append(1e3 * dt)
    print("current step, by part (ms, median): " + ", ".join(f"{k} {sorted(v)[len(v) // 2]:.2f}" for k, v in parts.items()))


def bench_masking(args):
    import numpy as np
    import warnings
    import train
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast
    meta, data = train.load_data(args.data_dir)
    B, T, rate = 8, 1024, 0.3
    ids_all, flags_all = data["train"]
    starts = [i * T for i in range(B)]
    windows = [train.window(ids_all, flags_all, s, T) for s in starts]
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.data_dir, "tokenizer.json"), mask_token="[MASK]",
                                     pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]")
    # The collator needs character offsets: lay each token's text end to end, specials at (0, 0),
    # exactly what the tokenizer returns for text without spaces.
    examples = []
    for ids, _ in windows:
        special = (ids <= meta["mask_id"]).astype(np.int64)
        lens = np.array([0 if sp else len(hf_tok.convert_ids_to_tokens(int(t))) for t, sp in zip(ids, special)])
        ends = np.cumsum(lens)
        offsets = np.stack([ends - lens, ends], 1) * (1 - special)[:, None]
        examples.append(dict(input_ids=ids.tolist(), offset_mapping=offsets.tolist(), special_tokens_mask=special.tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collator = DataCollatorForLanguageModeling(hf_tok, mlm_probability=rate, whole_word_mask=True, seed=0)

    def ours():
        rngs = [np.random.default_rng([0, i]) for i in range(B)]
        return [train.whole_word_mask(ids, flags, rate, g, meta) for (ids, flags), g in zip(windows, rngs)]

    def theirs():
        return collator(examples)

    def timed(fn, n):
        fn()
        t = time.perf_counter()
        for _ in range(n):
            out = fn()
        return (time.perf_counter() - t) / n, out

    t_ours, res = timed(ours, 50)
    t_hf, batch = timed(theirs, 5)
    special = np.stack([ids <= meta["mask_id"] for ids, _ in windows])
    ours_rate = np.mean([(labels != -100).sum() for _, labels in res]) / np.mean((~special).sum(1))
    hf_masked = (batch["labels"] != -100).numpy()
    hf_rate = hf_masked.sum() / (~special).sum()
    # what the collator calls a word: runs of tokens whose offsets touch = a whole document here
    pieces = [m[~s][np.cumsum(s)[~s] == k] for m, s in zip(hf_masked, special) for k in np.unique(np.cumsum(s)[~s])]
    n_docs = len(pieces)
    all_or_none = sum(1 for d in pieces if d.all() or not d.any())
    print(f"{B} x {T} tokens from {args.data_dir}, target rate {rate:.0%}")
    print(f"{'':42s} {'ms/batch':>9s} {'M tokens/s':>11s} {'realised rate':>14s}")
    print(f"{'cmbert whole-word masking (jieba units)':42s} {1e3 * t_ours:9.2f} {B * T / t_ours / 1e6:11.2f} {ours_rate:14.1%}")
    print(f"{'transformers collator, whole_word_mask':42s} {1e3 * t_hf:9.2f} {B * T / t_hf / 1e6:11.2f} {hf_rate:14.1%}")
    print(f"speed-up: {t_hf / t_ours:.0f}x. The collator's 'word' is a run of tokens with touching offsets: in "
          f"Chinese, a whole document; {all_or_none} of {n_docs} document pieces were masked entirely or not at all.")

    # share of a default (tiny) training step spent on data loading + masking
    from cmbert import CMBert, config_from_preset
    cfg = train.TrainConfig()
    st = train.stages(cfg)[0]
    model = CMBert(config_from_preset("tiny", vocab_size=meta["vocab_size"]))
    opt = model.configure_optimizers(0.01, 1e-3, (0.9, 0.98))  # as train.py on a CPU
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=native)
    t_data = t_step = 0.0
    for step in range(6):
        t0 = time.perf_counter()
        inputs, labels, cu = train.train_batch(data, meta, cfg, step, 0, 0, 1, st.batch_size, st.seq_len)
        t1 = time.perf_counter()
        with autocast:
            _, loss = model(inputs, labels=labels, cu_seqlens=cu)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:  # the first step warms up
            t_data, t_step = t_data + t1 - t0, t_step + time.perf_counter() - t0
    print(f"default training step ({st.batch_size} x {st.seq_len}, {'bf16' if native else 'fp32'}): "
          f"{1e3 * t_step / 5:.0f} ms, of which data loading + masking {1e3 * t_data / 5:.1f} ms "
          f"({t_data / t_step:.1%})")


def shapes(text):
    """"16x1024,2x8192" -> [(16, 1024), (2, 8192)]."""
    try:
        return [tuple(int(n) for n in part.split("x")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: shapes are BxT, comma-separated (16x1024,2x8192)")


def main(argv=None):
    from support.settings import ArgParser
    p = ArgParser("bench.py", __doc__, epilog=__doc__.strip().split("\n\n", 1)[1])
    p.add_argument("what", choices=["prepare", "startup", "model", "gpu", "finetune", "masking"])
    p.add_argument("--data_dir", default="data/default")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=5, help="timed training steps per model and shape (gpu: 0 = checks only)")
    p.add_argument("--warmup", type=int, default=3, help="gpu: untimed steps before the timed ones (compiling)")
    p.add_argument("--only", default="", help="gpu: speed rows whose label contains one of these (comma-separated)")
    p.add_argument("--out", default="gpu.json", help="gpu: the JSON report")
    p.add_argument("--device", default="auto", help="gpu: cuda, cuda:N, cpu (the checks and the table on a CPU)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="gpu: as train.py's --dtype")
    p.add_argument("--preset", default="base", help="gpu: the model of the speed table (the checks use tiny)")
    p.add_argument("--shapes", type=shapes, default="16x1024,2x8192", help="gpu: B x T of the speed table")
    p.add_argument("--check_shape", type=lambda t: shapes(t)[0], default="2x1024", help="gpu: B x T of the checks")
    p.add_argument("--compile_backend", default="inductor",
                   help="gpu: torch.compile's backend for the compiled checks and rows (none: skip them)")
    p.add_argument("--input", nargs="+", help="prepare, startup: the corpus (files, directories or globs)")
    p.add_argument("--text_field", default="text", help="prepare, startup: prepare.py's --text_field")
    p.add_argument("--text_bytes", type=float, default=1e7, help="prepare: bytes of the corpus' text the parts are timed on")
    p.add_argument("--scale_to", type=float, default=1e8, help="prepare: the big file, that text repeated to this many bytes")
    p.add_argument("--slice_bytes", type=int, default=1 << 23,
                   help="prepare: prepare.py's --slice_bytes for the big file (default 8 MiB: 12 slices of 100 MB)")
    p.add_argument("--workers_list", default="1,2", help="prepare: worker counts of the encode step on the big file")
    p.add_argument("--sizes", default="1e7,1e8,2e9", help="startup: training tokens of the datasets (about)")
    p.add_argument("--bench_dir", default="data/bench", help="prepare, startup: where inputs and datasets are built")
    args = p.parse_args(argv)
    if args.what == "startup" and not args.input:
        p.error("startup needs --input: the corpus the datasets are made of (and --text_field for JSON)")
    args.workers_list = [int(w) for w in args.workers_list.split(",")]
    args.sizes = [int(float(x)) for x in args.sizes.split(",")]
    return {"prepare": bench_prepare, "startup": bench_startup, "model": bench_model, "gpu": bench_gpu,
            "finetune": bench_finetune, "masking": bench_masking}[args.what](args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_peak":
        peak_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit()
    main()
