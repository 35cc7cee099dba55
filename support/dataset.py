"""
A prepared dataset on disk (format 3), as prepare.py writes it and train.py reads it:

    tokenizer.json                    the BPE tokenizer the ids belong to           (step vocab)
    plan.json                         the settings every step shares, the validation threshold, the
                                      tokenizer's sha256, and the slices of the input files: the
                                      units of work (corpus.plan_slices)               (step vocab)
    shards/train-000012-0000.bin      uint16 token ids of slice 12's training documents, part 0;
                                      every document is stored as [CLS] tokens [SEP] (step encode)
    shards/train-000012-0000.words.bin  uint8 per token: 1 = it begins a whole-word unit, 0 = it continues one
    shards/val-000012-0000.bin, ...   the same for the slice's validation documents
    shards/done-000012.json           written when slice 12 is finished: the slice, its input's size
                                      and time, the tokenizer's sha256, each shard's token count,
                                      sha256, largest id and flag, the slice's statistics and unigram
                                      counts
    meta.json                         the manifest, written last (step finalize): every shard of each
                                      split in the order of the slices (file after file, each file's
                                      slices in order), with its token count and sha256; the totals,
                                      the training unigram counts, the validation documents' starts,
                                      and the fingerprint of the shard list

The slices are numbered through the corpus in input order; a file of at most --slice_bytes is one
slice. A shard holds at most --shard_tokens tokens and only one slice's documents, so a shard's
content depends on its slice alone, never on which machine or process wrote it. Each split is the
concatenation of its shards in manifest order. Every file is written under a temporary name and
renamed when complete: a shard that exists is whole, a slice with a done record is finished, and a
directory without meta.json is incomplete (train.py refuses it). The reader checks the manifest and
every shard's size before any training, and every slice it reads, so a missing, damaged or foreign
file is one line naming it.
"""
import contextlib, hashlib, json, os, re, resource
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import Refused, why
from .files import is_temp, new_temp, sha256, write_bytes

FORMAT_VERSION = 3  # 3: shards and a manifest; 2: one train.bin / val.bin per split
SPLITS = ("train", "val")
TOP = ["tokenizer.json", "plan.json", "meta.json", "shards"]
FORMAT_2 = ["train.bin", "train.words.bin", "val.bin", "val.words.bin"]  # what older versions wrote
SHARD_FILE = re.compile(r"(train|val)-(\d{6})-(\d{4})(\.words)?\.bin")
DONE_FILE = re.compile(r"done-(\d{6})\.json")
META_KEYS = ["format_version", "vocab_size", "tokenizer_size", "pad_id", "cls_id", "sep_id", "mask_id",
             "train_tokens", "val_tokens", "tokenizer_sha256", "shards", "unigram_counts", "fingerprint"]
READ_TOKENS = 1 << 22  # shards are checked and hashed in blocks of this many tokens: memory stays flat


def shard_name(split, index, part):
    return f"{split}-{index:06d}-{part:04d}"


def shard_paths(out, name):
    return os.path.join(out, "shards", f"{name}.bin"), os.path.join(out, "shards", f"{name}.words.bin")


def done_path(out, index):
    return os.path.join(out, "shards", f"done-{index:06d}.json")


def json_text(obj, depth=0):
    """JSON whose objects and lists of objects are indented down to the shard records, and whose lists
    of numbers stay on one line: a manifest of thousands of shards and a 32k-entry unigram table reads
    as a page, not as 32k lines."""
    pad = "  " * depth
    if depth < 3 and isinstance(obj, dict) and obj:
        items = [f"{pad}  {json.dumps(k, ensure_ascii=False)}: {json_text(v, depth + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if depth < 3 and isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        return "[\n" + ",\n".join(f"{pad}  {json_text(v, depth + 1)}" for v in obj) + f"\n{pad}]"
    return json.dumps(obj, ensure_ascii=False)


def write_json(path, obj):
    write_bytes(path, (json_text(obj) + "\n").encode("utf-8"))


def read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (ValueError, OSError) as e:
        raise Refused(f"{path}: not readable JSON ({why(e)})")
    if not isinstance(obj, dict):
        raise Refused(f"{path}: not {what}")
    return obj


# ------------------------------------------------------------------------------------------
# Writing (prepare.py)

def temp_of(name):
    """The final name a temporary file name stands for (files.py: .NAME.<8 hex>.tmp), else None."""
    m = re.fullmatch(r"\.(.+)\.[0-9a-f]{8}\.tmp", name)
    return m.group(1) if m else None


def file_index(name):
    """The slice a name in shards/ belongs to (a shard, a done record or a temporary one), else None."""
    m = SHARD_FILE.fullmatch(temp_of(name) or name) or DONE_FILE.fullmatch(temp_of(name) or name)
    return int(m.group(2) if m.re is SHARD_FILE else m.group(1)) if m else None


def own_file(name, where):
    """Whether prepare.py writes files of this name at the top of a dataset or in shards/."""
    if where == "shards":
        return file_index(name) is not None
    finals = TOP + FORMAT_2
    return name in finals or name in {f".{n}.tmp" for n in finals} or is_temp(name, finals)


def settings_of(path):
    """The JSON object in a plan.json or meta.json, {} if it is damaged, None if there is none."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else {}
    except (ValueError, OSError):
        return {}


def check_out_dir(out, settings, overwrite):
    """Before the vocabulary step: prepare.py writes only into an empty directory or one that holds a
    dataset it made (its own files, complete or not); anything else, e.g. a trained model's directory,
    is refused unless --overwrite. A dataset with other settings is kept unless --overwrite. The
    directory must be writable; temporary files a killed run left are removed. Returns the plan when
    the directory already holds this dataset's plan and tokenizer (a re-run then resumes: finished
    files are kept); else None, after removing what an earlier dataset left (--overwrite: always)."""
    shards = os.path.join(out, "shards")
    if os.path.exists(out) and not os.path.isdir(out):
        raise Refused(f"--out_dir {out}: exists and is not a directory")
    names = [(n, "top") for n in os.listdir(out)] if os.path.isdir(out) else []
    names += [(n, "shards") for n in os.listdir(shards)] if os.path.isdir(shards) else []
    foreign = sorted(n for n, where in names if not own_file(n, where))
    if foreign and not overwrite:
        raise Refused(f"--out_dir {out}: holds files prepare.py did not write ({', '.join(foreign[:3])}); "
                      f"choose an empty or new directory, or pass --overwrite")
    plan, meta = settings_of(os.path.join(out, "plan.json")), settings_of(os.path.join(out, "meta.json"))
    old = plan if plan is not None else meta
    if old is not None and old.get("settings") != settings and not overwrite:
        if old.get("format_version") == 2:
            raise Refused(f"{out}: holds a dataset of format 2 (one train.bin per split), which this train.py cannot "
                          f"read; pass --overwrite to replace it, or choose another --out_dir")
        raise Refused(f"{out}: already holds a different dataset (see its meta.json or plan.json); "
                      f"choose another --out_dir or pass --overwrite")
    tok = os.path.join(out, "tokenizer.json")
    resumed = plan is not None and plan.get("settings") == settings and "val_threshold" in plan and not overwrite \
        and os.path.isfile(tok) and sha256(tok) == plan.get("tokenizer_sha256")
    try:
        os.makedirs(shards, exist_ok=True)
        os.remove(new_temp(os.path.join(out, "meta.json")))  # can we write here? (before hours of work)
        for n, where in names:
            if own_file(n, where) and n != "shards" and (n.endswith(".tmp") or not resumed):
                os.remove(os.path.join(shards if where == "shards" else out, n))  # and the old dataset, unless resumed
        invalidate(out)  # incomplete from here until the new manifest lands
    except OSError as e:
        raise Refused(f"--out_dir {out}: cannot write there ({why(e)})")
    return plan if resumed else None


def write_plan(out, tokenizer_json, plan):
    """tokenizer.json, then plan.json with its sha256: a plan that exists names a tokenizer that exists."""
    path = os.path.join(out, "tokenizer.json")
    write_bytes(path, tokenizer_json.encode("utf-8"))
    plan["tokenizer_sha256"] = sha256(path)
    write_json(os.path.join(out, "plan.json"), plan)
    return plan


def read_plan(out, settings):
    """The plan of the vocabulary step, for the encode and finalize steps: it exists, was made with the
    settings this step is given, and names the tokenizer.json that is there."""
    path = os.path.join(out, "plan.json")
    if not os.path.exists(path):
        raise Refused(f"{out}: no plan.json: run prepare.py --step vocab first, with the options of every step")
    plan = read_json(path, "a plan written by prepare.py")
    old = plan.get("settings") if isinstance(plan.get("settings"), dict) else {}
    diff = next((k for k in settings if old.get(k) != settings[k]), None)
    if diff or "val_threshold" not in plan:
        raise Refused(f"{path}: made with {diff}={old.get(diff)!r}, this step has {settings.get(diff)!r}: give every "
                      f"step the same options" if diff else f"{path}: lacks val_threshold (damaged?)")
    tok = os.path.join(out, "tokenizer.json")
    got = sha256(tok) if os.path.isfile(tok) else "missing"
    if got != plan.get("tokenizer_sha256"):
        raise Refused(f"{tok}: not the tokenizer plan.json names ({got[:12]}...); run --step vocab again")
    return plan


def remove_temps(out, indices):
    """Remove the temporary files of these slices' shards and done records (only theirs: other
    processes may be writing their own)."""
    shards = os.path.join(out, "shards")
    for n in os.listdir(shards):
        if temp_of(n) and file_index(n) in indices:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(shards, n))


def run_jobs(fn, jobs, workers, init, initargs, out, done):
    """fn(job) for every job (job[0]: the slice it writes), then done(1): in this process if workers is
    1 or there is one job, else in a pool of `workers` forked processes, each started with
    init(*initargs), a job at a time. When one fails, the pool stops the others mid-slice; the
    temporary files they leave are removed before the error goes on."""
    if workers == 1 or len(jobs) <= 1:
        init(*initargs)
        for job in jobs:
            fn(job)
            done(1)
        return
    import multiprocessing as mp
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    try:
        with ctx.Pool(min(workers, len(jobs)), init, initargs) as pool:
            for _ in pool.imap_unordered(fn, jobs, chunksize=1):
                done(1)
    except BaseException:
        remove_temps(out, {job[0] for job in jobs})
        raise


def invalidate(out):
    """The shards are about to change: remove meta.json, so nothing trusts the old manifest."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out, "meta.json"))


class SliceWriter:
    """The shards of one slice: per split, parts of at most `limit` tokens, each written under
    temporary names and renamed when full or at the end; each renamed part is then read back once
    for its record (scan_shard). Used as a context manager: an error or an interrupt removes the
    temporary files, and a write error (a full disk) is one line naming the shard."""
    def __init__(self, out, index, limit, vocab_size):
        self.out, self.index, self.limit = out, index, limit
        self.parts, self.records = {}, {s: [] for s in SPLITS}
        self.counts = np.zeros(vocab_size, np.int64)  # training unigram counts
        self.doc_tokens = {s: dict(longest=0, over_1024=0, over_8192=0) for s in SPLITS}
        self.current = {s: 0 for s in SPLITS}  # tokens of the split's document being written, so far
        self.writing = None  # the shard being written

    def __enter__(self):
        remove_temps(self.out, {self.index})  # what a killed run left of this slice's shards
        return self

    def write(self, ids, flags, lengths, val, last):
        """A chunk of pieces of documents laid end to end: piece p is lengths[p] tokens of ids and
        flags, goes to validation if val[p], else to train, and is its document's final piece if
        last[p]. Each split's pieces go, in order, at the end of its current shard."""
        lengths, val, last = np.asarray(lengths, np.int64), np.asarray(val, bool), np.asarray(last, bool)
        to_val = np.repeat(val, lengths)
        for split, mine, tokens in (("train", ~val, ~to_val), ("val", val, to_val)):
            if mine.any():
                self.count_documents(split, lengths[mine], last[mine])
                self.append(split, ids[tokens], flags[tokens])

    def count_documents(self, split, lengths, last):
        ends = np.cumsum(lengths) + self.current[split]  # tokens of the open document, then of each piece
        docs = np.diff(ends[last], prepend=0)
        self.current[split] = int(ends[-1] - (ends[last][-1] if last.any() else 0))
        if len(docs):
            stat = self.doc_tokens[split]
            stat["longest"] = max(stat["longest"], int(docs.max()))
            stat["over_1024"] += int((docs > 1024).sum())
            stat["over_8192"] += int((docs > 8192).sum())

    def append(self, split, ids, flags):
        while len(ids):
            if split not in self.parts:
                name = shard_name(split, self.index, len(self.records[split]))
                tmps = [new_temp(p) for p in shard_paths(self.out, name)]
                self.parts[split] = [name, tmps, [open(t, "wb") for t in tmps], 0]
            part = self.parts[split]
            take = min(len(ids), self.limit - part[3])
            self.writing = part[0]
            part[2][0].write(ids[:take].astype("<u2").tobytes())
            part[2][1].write(flags[:take].astype(np.uint8).tobytes())
            part[3] += take
            ids, flags = ids[take:], flags[take:]
            if part[3] == self.limit:
                self.close(split)

    def close(self, split):
        name, tmps, handles, _ = self.parts[split]
        self.writing = name
        for h in handles:
            h.flush()
            os.fsync(h.fileno())  # on disk before the name points at it
            h.close()
        for tmp, path in zip(tmps, shard_paths(self.out, name)):
            os.replace(tmp, path)
        del self.parts[split]  # only now: until here __exit__ removes the temporary files
        self.records[split].append(scan_shard(self.out, name, self.counts if split == "train" else None,
                                              starts=split == "val"))

    def finish(self, source, span, stat, tokenizer_sha256, stats, seconds):
        """Close the last shards, then write the slice's done record (see finished()); returns it."""
        for split in list(self.parts):
            self.close(split)
        nonzero = np.flatnonzero(self.counts)
        record = dict(input=source, slice=span, input_size=stat.st_size, input_mtime_ns=stat.st_mtime_ns,
                      tokenizer_sha256=tokenizer_sha256, stats=stats, document_tokens=self.doc_tokens,
                      unigram=dict(ids=nonzero.tolist(), counts=self.counts[nonzero].tolist()), shards=self.records,
                      seconds=round(seconds, 2), peak_rss_mb=peak_rss_mb())
        write_json(done_path(self.out, self.index), record)
        return record

    def __exit__(self, kind, error, tb):
        for _, tmps, handles, _ in self.parts.values():
            for h, tmp in zip(handles, tmps):
                with contextlib.suppress(OSError):  # closing flushes: on a full disk that fails again
                    h.close()
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
        if isinstance(error, OSError):
            raise Refused(f"{error.filename or shard_paths(self.out, self.writing or '?')[0]}: {why(error)}") from None


def peak_rss_mb():
    """This process's peak resident memory in MB: VmHWM, which starts afresh at exec (ru_maxrss, the
    fallback off Linux, keeps the peak of whatever process forked this one, such as a benchmark)."""
    try:
        with open("/proc/self/status") as f:
            return round(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024, 1)
    except (OSError, StopIteration, ValueError):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def scan_shard(out, name, counts=None, starts=False):
    """Read one shard once, in blocks: its record (token count, sha256 of the ids then the flags, largest
    id and flag); with `counts`, add its ids to these unigram counts; with `starts`, the positions of
    its [CLS] tokens (where its documents begin)."""
    from .tokens import CLS_ID
    ids_path, flags_path = shard_paths(out, name)
    h, n, top, doc_starts = hashlib.sha256(), 0, 0, []
    with open(ids_path, "rb") as f:
        while block := f.read(2 * READ_TOKENS):
            ids = np.frombuffer(block, "<u2")
            h.update(block)
            top = max(top, int(ids.max()))
            if counts is not None:
                counts += np.bincount(ids, minlength=len(counts))[:len(counts)]
            if starts:
                doc_starts += (np.flatnonzero(ids == CLS_ID) + n).tolist()
            n += len(ids)
    m, top_flag = 0, 0
    with open(flags_path, "rb") as f:
        while block := f.read(READ_TOKENS):
            h.update(block)
            top_flag = max(top_flag, int(np.frombuffer(block, np.uint8).max()))
            m += len(block)
    if m != n:
        raise Refused(f"{flags_path}: {m} flags for {n} token ids")
    record = dict(name=name, tokens=n, sha256=h.hexdigest(), max_id=top, max_flag=top_flag)
    return {**record, "doc_starts": doc_starts} if starts else record


def finished(out, index, source, span, tokenizer_sha256):
    """The done record of slice `index` if that slice is finished and still so: it is this slice of
    this input, the input has the size and time it had (a changed file is encoded again, all its
    slices), the tokenizer is the same, every shard is there with its recorded size. Else None: the
    slice is encoded (again)."""
    try:
        with open(done_path(out, index), encoding="utf-8") as f:
            record = json.load(f)
        stat = os.stat(source)
        if (record["input"], record["slice"], record["input_size"], record["input_mtime_ns"], record["tokenizer_sha256"]) \
                != (source, span, stat.st_size, stat.st_mtime_ns, tokenizer_sha256):
            return None
        for split in SPLITS:
            for s in record["shards"][split]:
                if [os.path.getsize(p) for p in shard_paths(out, s["name"])] != [2 * s["tokens"], s["tokens"]]:
                    return None
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_size(path, size, where):
    n = os.path.getsize(path) if os.path.isfile(path) else -1
    if n != size:
        unit = 2 if path.endswith(".bin") and not path.endswith(".words.bin") else 1
        raise Refused(f"{path}: " + ("missing" if n < 0 else "empty" if n == 0 else
                                     f"{n} bytes, not a whole number of {unit}-byte entries (truncated?)" if n % unit else
                                     f"{n} bytes, but {where} records {size} (truncated, or another dataset's shard)"))


def collect(out, files, slices, tokenizer_sha256, vocab_size, workers=1):
    """The finalize step's checks: every slice has its done record, encoded with this tokenizer, and
    every shard it names exists and is whole: its size, then its sha256 (read in full, in `workers`
    threads). Returns the records in slice order, their unigram counts summed as they are read (held
    apart, a record's counts are megabytes of Python ints); any fault is one line naming the file."""
    from .corpus import slice_name
    invalidate(out)  # an old manifest is not trusted past this point
    records, counts = [], np.zeros(vocab_size, np.int64)
    for i, span in enumerate(slices):
        path, source = done_path(out, i), slice_name(files[span["file"]], span)
        if not os.path.exists(path):
            raise Refused(f"{source}: not encoded yet ({path} is missing): run --step encode on the machine "
                          f"that owns it (--rank {i} modulo --world)")
        record = read_json(path, "a done record")
        if (record.get("input"), record.get("slice")) != (files[span["file"]], span):
            raise Refused(f"{path}: the record of {record.get('input')}, not of slice {i} ({source}): "
                          f"another dataset's file")
        if record.get("tokenizer_sha256") != tokenizer_sha256:
            raise Refused(f"{path}: encoded with another tokenizer (sha256 {str(record.get('tokenizer_sha256'))[:12]}..., "
                          f"this dataset's is {tokenizer_sha256[:12]}...); encode {source} again")
        try:
            unigram = record.pop("unigram")
            counts[np.asarray(unigram["ids"], np.int64)] += np.asarray(unigram["counts"], np.int64)
            whole = {"stats", "document_tokens", "seconds"} <= set(record) and all(
                {"name", "tokens", "sha256", "max_id", "max_flag"} | ({"doc_starts"} if split == "val" else set()) <= set(s)
                for split in SPLITS for s in record["shards"][split])
        except (KeyError, TypeError, ValueError, IndexError):
            whole = False
        if not whole:
            raise Refused(f"{path}: not a done record as prepare.py writes it (damaged?); encode {source} again")
        records.append(record)

    def verify(s):
        for path, size in zip(shard_paths(out, s["name"]), (2 * s["tokens"], s["tokens"])):
            check_size(path, size, "its done record")
        got = scan_shard(out, s["name"])
        if got["sha256"] != s["sha256"]:
            raise Refused(f"{shard_paths(out, s['name'])[0]} (with its .words.bin): sha256 {got['sha256'][:12]}..., but "
                          f"its done record says {s['sha256'][:12]}... (damaged, or another dataset's shard)")
    with ThreadPoolExecutor(workers) as pool:  # hashing releases the GIL: the threads read in parallel
        list(pool.map(verify, [s for r in records for split in SPLITS for s in r["shards"][split]]))
    return records, counts


def fingerprint(shards):
    """The identity of a dataset's token streams: a sha256 of its shard list, in order, with each
    shard's token count and checksum. A checkpoint records it; a resume on other data is refused."""
    rows = [[split, s["name"], s["tokens"], s["sha256"]] for split in SPLITS for s in shards[split]]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def cap_validation(records, max_tokens):
    """Validation keeps the validation documents of whole slices, taken in an order spread over the
    corpus (by a hash of the slice's position), until --max_val_tokens is reached. The rest is set
    aside, in neither split: an exact copy of a set-aside document in another slice may be validation."""
    order = sorted(range(len(records)), key=lambda i: hashlib.sha256(str(i).encode()).digest())
    kept, total = set(), 0
    for i in order:
        if total >= max_tokens:
            break
        kept.add(i)
        total += sum(s["tokens"] for s in records[i]["shards"]["val"])
    return kept


def write_manifest(out, records, counts, kept, plan, fixed):
    """meta.json, last (it marks the directory complete): the totals of the done records, the shards of
    each split in slice order (validation: those of the slices in `kept`), the training unigram
    counts, and the fingerprint of the shard list."""
    val = [r for i, r in enumerate(records) if i in kept]
    total = {k: sum(r["stats"][k] for r in records) for k in records[0]["stats"]}
    shards = dict(train=[s for r in records for s in r["shards"]["train"]], val=[s for r in val for s in r["shards"]["val"]])
    n_val, n_tok = sum(r["stats"]["val_documents"] for r in val), total["tokens"]
    aside = [s for i, r in enumerate(records) if i not in kept for s in r["shards"]["val"]]
    meta = dict(
        format_version=FORMAT_VERSION, vocab_size=len(counts), tokenizer_size=plan["tokenizer_size"], **fixed,
        train_tokens=sum(s["tokens"] for s in shards["train"]), val_tokens=sum(s["tokens"] for s in shards["val"]),
        documents=total["train_documents"] + n_val, train_documents=total["train_documents"], val_documents=n_val,
        characters=total["chars"], documents_read=total["documents_read"],
        duplicates_removed=total["duplicates_removed"], duplicates_kept=total["duplicates_kept"],
        val_threshold=plan["val_threshold"], val_set_aside=dict(
            slices=sum(1 for i, r in enumerate(records) if i not in kept and r["shards"]["val"]),
            documents=total["val_documents"] - n_val, tokens=sum(s["tokens"] for s in aside)),
        document_tokens={split: dict(longest=max([r["document_tokens"][split]["longest"] for r in rs] + [0]),
                                     **{k: sum(r["document_tokens"][split][k] for r in rs) for k in ("over_1024", "over_8192")})
                         for split, rs in (("train", records), ("val", val))},
        chars_per_token=round(total["chars"] / max(n_tok, 1), 4), cross_word_token_rate=round(total["cross"] / max(n_tok, 1), 4),
        tokens_per_unit=round(n_tok / max(total["units"], 1), 4), unk_tokens=total["unk"],
        tokenizer_sha256=plan["tokenizer_sha256"], seconds_vocab=plan["seconds_vocab"],
        seconds_encode=round(sum(r["seconds"] for r in records), 2), settings=plan["settings"],
        unigram_counts=counts.tolist(), shards=shards, fingerprint=fingerprint(shards))
    for split in SPLITS:
        if not shards[split]:
            raise Refused(f"{out}: no {split} documents ({meta['documents_read']:,} documents read, threshold "
                          f"{plan['val_threshold']:.3g}); the corpus is too small to split")
    write_json(os.path.join(out, "meta.json"), meta)
    return meta


def describe(out, meta):
    """What prepare.py prints at the end."""
    return (f"wrote {out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens in "
            f"{len(meta['shards']['train'])} + {len(meta['shards']['val'])} shards, from {meta['documents']:,} "
            f"documents ({meta['characters']:,} chars)\n"
            f"  {meta['duplicates_removed']:,} exact duplicate documents removed (within each slice); longest "
            f"document {meta['document_tokens']['train']['longest']:,} tokens in train, "
            f"{meta['document_tokens']['val']['longest']:,} in val"
            + (f"; {meta['val_set_aside']['tokens']:,} validation tokens set aside beyond --max_val_tokens"
               if meta["val_set_aside"]["tokens"] else "") + "\n"
            f"  vocab {meta['tokenizer_size']:,} (embedding {meta['vocab_size']:,}), "
            f"{meta['chars_per_token']:.3f} chars/token, {meta['cross_word_token_rate']:.1%} of tokens "
            f"cross a jieba word boundary, {meta['tokens_per_unit']:.3f} tokens per whole-word unit, "
            f"{meta['unk_tokens']} [UNK]")


# ------------------------------------------------------------------------------------------
# Reading (train.py)

class Stream:
    """A split's token ids (or word flags) as one array over its shards, in manifest order: len(s) and
    s[a:b] (a numpy array, which may span shards) are what train.py uses, as it used a memory map of
    one file. A slice is read with pread from the shards it spans; nothing is read ahead and at most
    OPEN_FILES shards are held open (on a parallel filesystem an open is the costly part): memory
    does not grow with the corpus. Every slice is checked as it is read (ids inside the vocabulary,
    flags 0 or 1): a shard damaged after prepare.py checked it is one line naming it, never a batch."""
    OPEN_FILES = 64

    def __init__(self, paths, lengths, dtype, limit, fault):
        self.paths, self.dtype, self.limit, self.fault = paths, np.dtype(dtype), limit, fault
        self.ends = np.cumsum(np.asarray(lengths, np.int64))
        self.starts = self.ends - np.asarray(lengths, np.int64)
        self.doc_starts = None  # validation: where its documents begin (from the manifest)
        self.fds = {}  # shard index -> open file descriptor, least recently used first

    def read(self, k, offset, n):
        fd = self.fds.pop(k, None)
        if fd is None:
            while len(self.fds) >= self.OPEN_FILES:
                os.close(self.fds.pop(next(iter(self.fds))))
            fd = os.open(self.paths[k], os.O_RDONLY)
        self.fds[k] = fd
        size = self.dtype.itemsize
        data = os.pread(fd, n * size, offset * size)  # shorter only at the end of the file
        return np.frombuffer(data[:len(data) // size * size], self.dtype).copy()

    def __del__(self):
        for fd in getattr(self, "fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def __len__(self):
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, key):
        if not isinstance(key, slice):
            i = int(key) + (len(self) if int(key) < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(key)
            return self[i:i + 1][0]
        a, b, step = key.indices(len(self))
        if step != 1:
            raise IndexError("a stream is read in contiguous slices")
        parts, k = [], int(np.searchsorted(self.ends, a, side="right"))
        while a < b:
            n, local = int(min(b, self.ends[k]) - a), int(a - self.starts[k])
            try:
                x = self.read(k, local, n)
            except OSError as e:
                raise Refused(f"{self.paths[k]}: cannot read it ({why(e)})")
            if len(x) != n:
                raise Refused(f"{self.paths[k]}: ends before the {int(self.ends[k] - self.starts[k])} entries "
                              f"meta.json records (truncated?)")
            bad = np.flatnonzero(x >= self.limit)
            if len(bad):
                raise Refused(self.fault.format(path=self.paths[k], i=local + int(bad[0]), v=int(x[bad[0]])))
            parts.append(x)
            a, k = a + n, k + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty(0, self.dtype)


def load(data_dir):
    """meta.json, tokenizer.json and the shards of a prepare.py directory, each checked first from the
    manifest and the files' sizes (nothing is scanned: start-up time and memory do not grow with the
    corpus): a missing, corrupt or foreign file is one line naming it, never a traceback later on.
    Returns (meta, {"train": (ids, flags), "val": (ids, flags)}), each a Stream over its shards; the
    validation ids know where its documents begin (.doc_starts)."""
    meta_path, tok_path = os.path.join(data_dir, "meta.json"), os.path.join(data_dir, "tokenizer.json")
    if not os.path.isdir(data_dir):
        raise Refused(f"--data_dir={data_dir}: no such directory (the folder prepare.py wrote: data/default by "
                      f"default, or its --out_dir)")
    if not os.path.exists(meta_path):
        raise Refused(f"{data_dir}: no meta.json (run prepare.py; a directory without it is incomplete)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (ValueError, OSError) as e:
        raise Refused(f"{meta_path}: not readable JSON ({why(e)})")
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise Refused(f"{meta_path}: lacks format_version (not written by prepare.py, or damaged)")
    if meta["format_version"] == 2:
        raise Refused(f"{meta_path}: format 2 (one train.bin per split), but this train.py reads format "
                      f"{FORMAT_VERSION} (shards and a manifest): prepare the corpus again with this prepare.py, "
                      f"its options and --overwrite (or another --out_dir)")
    if meta["format_version"] != FORMAT_VERSION:
        raise Refused(f"{meta_path}: format_version {meta['format_version']!r}, but this train.py reads "
                      f"{FORMAT_VERSION} (run this version's prepare.py)")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise Refused(f"{meta_path}: lacks {', '.join(missing)} (not written by prepare.py, or damaged)")
    bad = [k for k in META_KEYS[1:-4] if type(meta[k]) is not int or meta[k] < 0]
    if bad or not meta["tokenizer_size"] <= meta["vocab_size"] <= 65536:
        raise Refused(f"{meta_path}: bad value of {(bad or ['tokenizer_size/vocab_size'])[0]} (damaged?)")
    if not os.path.exists(tok_path):
        raise Refused(f"{tok_path}: missing (run prepare.py; the run copies it next to the model)")
    if sha256(tok_path) != meta["tokenizer_sha256"]:
        raise Refused(f"{tok_path}: not the tokenizer meta.json names (sha256 {sha256(tok_path)[:12]}..., meta.json: "
                      f"{str(meta['tokenizer_sha256'])[:12]}...); the token ids would mean other text. Run prepare.py again")
    try:
        shards = {split: [(s["name"], int(s["tokens"]), int(s["max_id"]), int(s["max_flag"]), str(s["sha256"]))
                          for s in meta["shards"][split]] for split in SPLITS}
        counts = np.asarray(meta["unigram_counts"], np.int64)
        doc_starts = [np.asarray(s["doc_starts"], np.int64) for s in meta["shards"]["val"]]
    except (KeyError, TypeError, ValueError) as e:
        raise Refused(f"{meta_path}: bad shard list or unigram counts ({why(e)}; damaged?)")
    if fingerprint(meta["shards"]) != meta["fingerprint"]:
        raise Refused(f"{meta_path}: its fingerprint does not match its shard list (edited or damaged); run the "
                      f"finalize step again")
    if counts.shape != (meta["vocab_size"],) or counts.min() < 0 or counts.sum() != meta["train_tokens"]:
        raise Refused(f"{meta_path}: its unigram counts do not match its vocabulary and training tokens (damaged?)")
    data = {}
    for split in SPLITS:
        if not shards[split] or sum(n for _, n, *_ in shards[split]) != meta[f"{split}_tokens"]:
            raise Refused(f"{meta_path}: " + (f"no {split} shards" if not shards[split] else
                                              f"its {split} shards do not add up to {split}_tokens (damaged?)"))
        for name, n, top, top_flag, _ in shards[split]:
            if top >= meta["tokenizer_size"] or top_flag > 1:
                raise Refused(f"{meta_path}: shard {name} has " + (f"ids up to {top}, outside the vocabulary of "
                              f"{meta['tokenizer_size']}" if top >= meta["tokenizer_size"] else f"flags up to {top_flag}"))
            for path, size in zip(shard_paths(data_dir, name), (2 * n, n)):
                check_size(path, size, "meta.json")
        names, lengths = [s[0] for s in shards[split]], [s[1] for s in shards[split]]
        ids = Stream([shard_paths(data_dir, n)[0] for n in names], lengths, "<u2", meta["tokenizer_size"],
                     "{path}: token {i} has id {v}, outside the vocabulary of " + str(meta["tokenizer_size"]))
        flags = Stream([shard_paths(data_dir, n)[1] for n in names], lengths, np.uint8, 2,
                       "{path}: entry {i} is not 0 or 1")
        data[split] = (ids, flags)
    offsets = data["val"][0].starts
    data["val"][0].doc_starts = np.concatenate([s + o for s, o in zip(doc_starts, offsets)])
    return meta, data
