"""
Fine-tune a checkpoint on the CLUE benchmark under one protocol and print a results table.

    python eval_clue.py --model_dir out --data_dir path/to/clue --tasks afqmc,tnews,cluewsc2020 --seeds 3
    python eval_clue.py --model_dir out --data_dir clue --tasks all --init random   # the no-pre-training baseline
    python eval_clue.py --model_dir out --data_dir clue --tasks simclue --save finetuned   # sentence embeddings
    python eval_clue.py --model_dir out --data_dir clue --tasks chid --zero_shot_only   # the masked LM fills blanks

data_dir holds the official layout (afqmc_public/, tnews_public/, iflytek_public/, ocnli_public/,
cmnli_public/, cluewsc2020_public/, csl_public/, simclue_public/, c3_public/ {d,m}-{train,dev}.json
or the C3 release's c3-{d,m}-{train,dev}.json, CMRC2018 as cmrc2018_public/{train,dev}.json or
cmrc2018_train.json / cmrc2018_dev.json, ChID as chid_public/{train,dev}.json in FewCLUE's or CLUE's
layout). Classification tasks report dev accuracy next to the majority class, C3 and ChID (multiple
choice; a batch counts questions or blanks) next to chance, and ChID also the masked LM's zero-shot
accuracy next to chance and to the same model without the passage; CMRC2018 reports F1 and EM with
the official script's metric; SimCLUE the Spearman and Pearson correlation between the cosine
similarity of the two sentence embeddings and the 0/1 label, next to the same score before
fine-tuning. Every task runs with --seeds seeds (mean +- std and per-seed scores). Results go to
<model_dir>/results_clue.json (or --out), rewritten after each task, and a markdown table on stdout.
"""
import math, os, random, time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cmbert import (CMBert, CMBertConfig, CMBertForMultipleChoice, CMBertForSequenceClassification, CMBertForSpans,
                    mean_pool)
from support import runtime, settings
from support.clue_data import (BLANK, choice_answers, cmrc_em, cmrc_f1, find_tasks, label_order, nonempty,
                               on_token_edges, pearson, read_c3, read_chid, read_classification, read_cmrc,
                               read_simclue_pairs, read_simclue_triples, spearman)
from support.clue_results import aggregate, cut_notes, markdown_table, save_model, versus
from support.errors import Refused, script
from support.files import write_json
from support.model_files import read_config
from support.tokens import CLS_ID, MASK_ID, SEP_ID

# Per-task defaults from the CLUE baselines: files, task kind, epochs, lr, batch, length, seeds.
# The two tasks whose scores move most between runs (CLUEWSC2020: 304 dev rows; CSL: a small,
# noisy task in CLUE's own reports) run three seeds unless --seeds says otherwise. A task's files
# are {role: name} in its folder (default: train.json and dev.json); `alt` lists other layouts,
# tried in order when the first one's files are not all there.
C3_RELEASE = {f"{g}-{split}": f"c3-{g}-{split}.json" for split in ("train", "dev") for g in "dm"}
TASKS = {
    "afqmc": dict(folder="afqmc_public", kind="pair", epochs=3, lr=2e-5, batch=32, max_len=128),
    "tnews": dict(folder="tnews_public", kind="single", epochs=3, lr=2e-5, batch=32, max_len=128),
    "iflytek": dict(folder="iflytek_public", kind="single", epochs=3, lr=2e-5, batch=32, max_len=128),
    "ocnli": dict(folder="ocnli_public", kind="pair", epochs=3, lr=2e-5, batch=32, max_len=128,
                  files=dict(train="train.50k.json", dev="dev.json")),
    "cmnli": dict(folder="cmnli_public", kind="pair", epochs=2, lr=3e-5, batch=32, max_len=128),
    "cluewsc2020": dict(folder="cluewsc2020_public", kind="wsc", epochs=50, lr=2e-5, batch=8, max_len=128, seeds=3),
    "csl": dict(folder="csl_public", kind="csl", epochs=5, lr=1e-5, batch=32, max_len=256, seeds=3),
    # CLUE's own copy first, then the squad-style names of the CMRC2018 release
    "cmrc2018": dict(folder="cmrc2018_public", kind="span", epochs=2, lr=3e-5, batch=32, max_len=512,
                     alt=[(".", dict(train="cmrc2018_train.json", dev="cmrc2018_dev.json"))]),
    # multiple choice: dialogue (d-) and mixed-genre (m-) passages, in CLUE's names, then the release's;
    # batch = questions (24 questions are ~94 rows of passage + question + choice)
    "c3": dict(folder="c3_public", kind="choice", epochs=8, lr=2e-5, batch=24, max_len=512,
               files={role: name[3:] for role, name in C3_RELEASE.items()},
               alt=[("c3_public", C3_RELEASE), (".", C3_RELEASE)]),
    # the idiom cloze: fine-tuned as multiple choice (a softmax over a blank's candidates), and answered
    # zero-shot by the masked LM; CLUE's lr and epochs, length 128 (CLUE's 64 cuts most FewCLUE passages)
    "chid": dict(folder="chid_public", kind="cloze", epochs=3, lr=2e-5, batch=24, max_len=128, seeds=3),
    # the retrieval probe: contrastive fine-tuning of mean-pooled sentence embeddings (SimCSE-style)
    "simclue": dict(folder="simclue_public", kind="retrieval", epochs=1, lr=3e-5, batch=64, max_len=64),
}


def task_settings(task, args):
    """The task's CLUE setting unless the command line sets it (None = not given)."""
    spec = TASKS[task]
    pick = lambda given, default: default if given is None else given  # noqa: E731
    return dict(epochs=pick(args.epochs, spec["epochs"]), lr=pick(args.lr, spec["lr"]),
                batch=pick(args.batch_size, spec["batch"]), max_len=pick(args.max_len, spec["max_len"]),
                seeds=pick(args.seeds, spec.get("seeds", 1)))


def subsample(rows, args):
    """--max_train_samples: one random subset (fixed by --seed), shared by all seeds of a task, so
    that the seeds measure training noise only."""
    if args.max_train_samples and args.max_train_samples < len(rows):
        return random.Random(args.seed).sample(rows, args.max_train_samples)
    return rows


# ------------------------------------------------------------------------------------------
# Fine-tuning: one loop for every task kind

class Padded:
    """Token id sequences stored once as one padded array, so building a batch is a slice, not a
    Python loop over rows. A batch whose rows all have the same length gets no attention mask."""
    def __init__(self, seqs):
        self.lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        self.ids = np.zeros((len(seqs), max(self.lengths, default=1)), dtype=np.int32)
        for i, s in enumerate(seqs):
            self.ids[i, :len(s)] = s

    def __len__(self):
        return len(self.lengths)

    def batch(self, idx, device):
        lengths = self.lengths[idx]
        T = int(lengths.max())
        ids = torch.from_numpy(self.ids[idx, :T].astype(np.int64)).to(device)
        if (lengths == T).all():
            return ids, None
        return ids, torch.from_numpy(np.arange(T)[None, :] < lengths[:, None]).to(device)


def batch_order(lengths, bs, seed, epoch, group=50):
    """Shuffled batches of similar length: shuffle, sort within groups of `group` batches, shuffle
    the batches. Rows of a batch then pad to a similar length instead of to the longest of a
    random draw, while every epoch still sees a new random order."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    batches = []
    for g in range(0, len(order), bs * group):
        chunk = sorted(order[g:g + bs * group], key=lambda j: lengths[j])
        batches += [chunk[i:i + bs] for i in range(0, len(chunk), bs)]
    return [np.array(batches[k]) for k in rng.permutation(len(batches))]


def train_step(model, opt, sched, loss):
    """One optimiser step. Nothing here reads a value back to the host, so on a GPU the CPU can
    queue the next batch while this one computes."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def dev_pass(batches, args, desc):
    """The batches of a dev pass, behind a progress bar that closes when the pass ends."""
    return tqdm(batches, desc=f"{desc} dev", unit="batch", leave=False, dynamic_ncols=True, disable=not args.progress)


def fine_tune(model, batches, n_train, evaluate, hp, args, desc, score_before=False):
    """AdamW with linear warm-up (10%) and linear decay; evaluate after every epoch (and before the
    first when score_before). The running loss is read back every 50 steps, not every step."""
    steps = hp["epochs"] * math.ceil(n_train / hp["batch"])
    warm = max(1, int(0.1 * steps))
    opt = model.configure_optimizers(0.01, hp["lr"], (0.9, 0.98), fused=args.device.split(":")[0] in ("cuda", "cpu"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, (steps - s) / max(1, steps - warm)))
    scores, losses, step = [], [], 0
    if score_before:
        model.eval()
        with torch.no_grad():
            scores.append(evaluate())
    bar = tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True, disable=not args.progress)
    for epoch in range(hp["epochs"]):
        model.train()
        total, n = torch.zeros((), device=args.device), 0
        for loss in batches(hp["batch"], epoch):
            train_step(model, opt, sched, loss)
            total += loss.detach().float()
            n, step = n + 1, step + 1
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{total.item() / n:.3f}")
        losses.append(total.item() / max(n, 1))
        if not math.isfinite(losses[-1]):
            raise Refused(f"{desc}: the training loss is {losses[-1]} in epoch {epoch + 1} (try a lower --lr)")
        model.eval()
        with torch.no_grad():
            scores.append(evaluate())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", dev=f"{scores[-1][0]:.4f}")
    bar.close()
    return scores, losses


# ------------------------------------------------------------------------------------------
# Classification (single sentences, pairs, CSL keywords, WSC spans): a label per row

def load_classification(task, paths, tok, args):
    hp, kind = task_settings(task, args), TASKS[task]["kind"]
    train, dropped_tr = read_classification(kind, paths["train"])
    dev, dropped_dev = read_classification(kind, paths["dev"])
    nonempty(train, paths["train"], "labelled rows")
    nonempty(dev, paths["dev"], "labelled rows")
    labels = label_order({ex[2] for ex in train})  # the whole file: a subsample may miss a rare label
    index = {label: i for i, label in enumerate(labels)}
    for a, b, label, lineno in dev:
        if label not in index:
            raise Refused(f"{paths['dev']}: line {lineno}: label {label!r} does not occur in {paths['train']}")
    train = subsample(train, args)
    tok.enable_truncation(hp["max_len"], strategy="longest_first")

    def encode(examples):
        pairs = [(a, b) if b is not None else a for a, b, _, _ in examples]
        return Padded([e.ids for e in tok.encode_batch(pairs)]), torch.tensor([index[ex[2]] for ex in examples])
    train_x, train_y = encode(train)
    dev_x, dev_y = encode(dev)
    notes = f"dropped {dropped_tr} train / {dropped_dev} dev rows labelled '-'" if dropped_tr + dropped_dev else ""
    majority = int(np.bincount(train_y.numpy(), minlength=len(labels)).argmax())
    return dict(labels=labels, train_x=train_x, train_y=train_y, dev_x=dev_x, dev_y=dev_y, notes=notes,
                baseline=float((dev_y == majority).float().mean()), n_train=len(train), n_dev=len(dev),
                report=dict(labels=len(labels)))


def run_classification(task, data, model, hp, seed, args):
    train_x, train_y, dev_x, dev_y = data["train_x"], data["train_y"], data["dev_x"], data["dev_y"]

    def batches(bs, epoch):
        for idx in batch_order(train_x.lengths, bs, seed, epoch):
            ids, mask = train_x.batch(idx, args.device)
            with args.autocast:
                yield model(ids, mask, labels=train_y[idx].to(args.device))[1]

    by_length = np.argsort(dev_x.lengths, kind="stable")  # less padding, same predictions

    def evaluate():
        pred = torch.empty(len(dev_x), dtype=torch.long, device=args.device)
        for i in dev_pass(range(0, len(by_length), 64), args, task):
            idx = by_length[i:i + 64]
            with args.autocast:
                pred[torch.from_numpy(idx).to(args.device)] = model(*dev_x.batch(idx, args.device))[0].argmax(-1)
        return (float((pred.cpu() == dev_y).float().mean()),)  # one read-back per evaluation

    return fine_tune(model, batches, len(train_x), evaluate, hp, args, task)


# ------------------------------------------------------------------------------------------
# Multiple choice (C3): one row per (passage, question, choice), the choices of a question in one softmax

def choice_rows(tok, questions, max_len):
    """[CLS] passage [SEP] question [SEP] choice [SEP] for every choice of every question, question
    after question. The question and the choice always fit: each keeps at most a quarter of
    max_len (C3's never need more at 512), and the passage is cut at its end to the room left.
    Returns (rows, first row of each question, choices per question, ids of the passages cut,
    number of questions or choices cut)."""
    enc = lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]  # noqa: E731
    texts = {q["passage_id"]: q["passage"] for q in questions}  # each passage encoded once
    passage = dict(zip(texts, enc(list(texts.values()))))
    asked = enc([q["question"] for q in questions])
    choices = iter(enc([c for q in questions for c in q["choices"]]))
    cap, rows, cut, capped = max_len // 4, [], set(), 0
    for q, question in zip(questions, asked):
        for _ in q["choices"]:
            choice = next(choices)
            capped += len(question) > cap or len(choice) > cap
            room = max_len - 4 - min(len(question), cap) - min(len(choice), cap)
            p = passage[q["passage_id"]]
            if len(p) > room:
                cut.add(q["passage_id"])
            rows.append([CLS_ID] + p[:room] + [SEP_ID] + question[:cap] + [SEP_ID] + choice[:cap] + [SEP_ID])
    n = np.array([len(q["choices"]) for q in questions])
    return Padded(rows), np.cumsum(n) - n, n, cut, capped


def question_rows(first, n, idx):
    """The rows of questions idx, question after question, and their numbers of choices."""
    k = n[idx]
    return np.repeat(first[idx] - (np.cumsum(k) - k), k) + np.arange(k.sum()), k


def load_choice(task, paths, tok, args):
    """C3's dialogue and mixed-genre files read together (CLUE reports one accuracy). Chance: the share
    of each dev question's choices that are its answer (1 / number of choices, unless one repeats it)."""
    hp = task_settings(task, args)
    read = lambda split: nonempty(read_c3(paths[f"d-{split}"]) + read_c3(paths[f"m-{split}"]),  # noqa: E731
                                  f"{paths[f'd-{split}']} and {paths[f'm-{split}']}", "questions")
    train, dev = subsample(read("train"), args), read("dev")
    tok.no_truncation()  # choice_rows cuts (another task's loader may have left truncation on)
    train_x, train_first, train_n, cut_train, capped = choice_rows(tok, train, hp["max_len"])
    dev_x, dev_first, dev_n, cut_dev, capped_dev = choice_rows(tok, dev, hp["max_len"])
    shares = {split: (len(cut), len({q["passage_id"] for q in qs}))
              for split, cut, qs in (("dev", cut_dev, dev), ("train", cut_train, train))}
    notes = cut_notes("passages cut", hp["max_len"], shares)
    if capped + capped_dev:
        notes += f"; {capped + capped_dev:,} rows with a question or choice cut to {hp['max_len'] // 4} tokens"
    return dict(train_x=train_x, train_first=train_first, train_n=train_n,
                answer=torch.tensor([q["answer"] for q in train]), dev_x=dev_x, dev_first=dev_first, dev_n=dev_n,
                n_train=len(train), n_dev=len(dev), notes=notes, **choice_answers(dev),
                report=dict(passages_cut={split: c / total for split, (c, total) in shares.items()}))


def longest(x, first):
    """Each question's length: that of its longest row (what its rows pad to in a batch)."""
    return np.maximum.reduceat(x.lengths, first)


@torch.no_grad()
def choice_accuracy(model, data, args, desc="dev"):
    """Dev accuracy, 16 questions (~60 rows) at a time, shortest first."""
    first, n, right = data["dev_first"], data["dev_n"], torch.from_numpy(data["dev_right"]).to(args.device)
    by_length, hits = np.argsort(longest(data["dev_x"], first), kind="stable"), torch.zeros((), device=args.device)
    for i in dev_pass(range(0, len(by_length), 16), args, desc):
        idx = by_length[i:i + 16]
        rows, k = question_rows(first, n, idx)
        with args.autocast:
            pred = model(*data["dev_x"].batch(rows, args.device), n_choices=k)[0].argmax(-1)
        hits += right[torch.from_numpy(first[idx]).to(args.device) + pred].sum()
    return (float(hits) / len(n),)  # one read-back per evaluation


def run_choice(task, data, model, hp, seed, args):
    first, n = data["train_first"], data["train_n"]

    def batches(bs, epoch):
        for idx in batch_order(longest(data["train_x"], first), bs, seed, epoch):
            rows, k = question_rows(first, n, idx)
            with args.autocast:
                yield model(*data["train_x"].batch(rows, args.device), labels=data["answer"][idx].to(args.device),
                            n_choices=k)[1]

    return fine_tune(model, batches, len(n), lambda: choice_accuracy(model, data, args, task), hp, args, task)


# ------------------------------------------------------------------------------------------
# Cloze (ChID): a passage with a blank and candidate idioms. Fine-tuned with the multiple-choice
# machinery above (a row per candidate, one softmax over a blank's candidates), and answered with no
# fine-tuning at all by the masked LM, which scores each candidate in the blank.

OTHER_BLANK = [MASK_ID] * 4  # another blank of the same passage: four masks (an idiom's four characters)
                             # whatever its answer: it shows that an idiom stood there, not which


def around_blank(left, right, room):
    """The context kept around a blank, never cut itself: at most half of `room` tokens on each side,
    and what one side does not use goes to the other. Returns (left, right, whether anything was cut)."""
    a = min(len(left), max(room // 2, room - len(right)))
    b = min(len(right), room - a)
    return left[len(left) - a:], right[:b], a + b < len(left) + len(right)


def cloze_rows(tok, items, max_len):
    """[CLS] context candidate context [SEP]: each candidate written into the blank, in the same
    context for all (cut around the blank to the room the longest candidate leaves). Returns (rows,
    first row of each item, candidates per item, where each row's candidate starts and its number of
    tokens, number of items whose context was cut)."""
    def enc(texts):  # pieces between blanks encoded apart: no token spans a blank's edge
        pieces = [t.split(BLANK) for t in texts]
        ids = iter(e.ids for e in tok.encode_batch([p for ps in pieces for p in ps], add_special_tokens=False))
        return [sum([OTHER_BLANK * (j > 0) + next(ids) for j in range(len(ps))], []) for ps in pieces]
    cands = iter(enc([c for it in items for c in it["choices"]]))
    rows, start, k, cut = [], [], [], 0
    for it, left, right in zip(items, enc([it["left"] for it in items]), enc([it["right"] for it in items])):
        cs = [next(cands) for _ in it["choices"]]
        longest = max(map(len, cs))
        if longest > max_len // 2:
            raise Refused(f"{it['where']}: a candidate of {longest} tokens leaves too little room for the passage "
                          f"in --max_len {max_len} (at most half of it)")
        left, right, was_cut = around_blank(left, right, max_len - 2 - longest)
        cut += was_cut
        rows += [[CLS_ID] + left + c + right + [SEP_ID] for c in cs]
        start, k = start + [1 + len(left)] * len(cs), k + [len(c) for c in cs]
    n = np.array([len(it["choices"]) for it in items], dtype=np.int64)
    return Padded(rows), np.cumsum(n) - n, n, np.array(start, dtype=np.int64), np.array(k, dtype=np.int64), cut


def load_cloze(task, paths, tok, args):
    """ChID in either layout (each blank an item), chance as for C3. --zero_shot_only reads no training file."""
    hp = task_settings(task, args)
    train = [] if args.zero_shot_only else subsample(nonempty(read_chid(paths["train"]), paths["train"], "blanks"), args)
    dev = nonempty(read_chid(paths["dev"]), paths["dev"], "blanks")
    tok.no_truncation()  # cloze_rows cuts
    train_x, train_first, train_n, _, _, cut_train = cloze_rows(tok, train, hp["max_len"])
    dev_x, dev_first, dev_n, dev_start, dev_k, cut_dev = cloze_rows(tok, dev, hp["max_len"])
    shares = {"dev": (cut_dev, len(dev))} | ({"train": (cut_train, len(train))} if train else {})
    return dict(train_x=train_x, train_first=train_first, train_n=train_n, answer=torch.tensor([it["answer"] for it in train]),
                dev_x=dev_x, dev_first=dev_first, dev_n=dev_n, dev_start=dev_start, dev_k=dev_k, n_train=len(train),
                n_dev=len(dev), report=dict(contexts_cut={split: c for split, (c, _) in shares.items()}),
                notes=cut_notes("contexts cut around the blank", hp["max_len"], shares), **choice_answers(dev))


@torch.no_grad()
def candidate_logprob(mlm, rows, start, k, whole_word, args, desc):
    """The masked LM's log-probability of each row's candidate tokens, summed per row: all of them
    masked at once (whole_word, as pre-training masked whole words), or each in turn with the others
    visible (the pseudo-log-likelihood). A query is (row, first masked position, positions masked).
    Queries share a batch only with queries of the same length: nothing is padded, so a score
    cannot depend on what else is in its batch."""
    if whole_word:
        q_row, q_pos, q_n = np.arange(len(start)), start, k
    else:
        q_row = np.repeat(np.arange(len(start)), k)
        q_pos, q_n = start[q_row] + np.arange(len(q_row)) - np.repeat(np.cumsum(k) - k, k), np.ones_like(q_row)
    lengths, total = rows.lengths[q_row], np.zeros(len(start))
    batches = [same[i:i + 64] for T in np.unique(lengths) for same in [np.flatnonzero(lengths == T)]
               for i in range(0, len(same), 64)]
    for b in dev_pass(batches, args, desc):
        ids = rows.ids[q_row[b], :lengths[b[0]]].astype(np.int64)
        masked = (np.arange(ids.shape[1]) >= q_pos[b, None]) & (np.arange(ids.shape[1]) < (q_pos + q_n)[b, None])
        labels = torch.from_numpy(np.where(masked, ids, -100)).to(args.device)
        ids[masked] = MASK_ID
        with args.autocast:  # the head runs on the masked positions only, in row-major order
            logits = mlm(torch.from_numpy(ids).to(args.device), labels=labels)[0]
        logp = logits.float().log_softmax(-1).gather(-1, labels[labels != -100][:, None])[:, 0]
        np.add.at(total, np.repeat(q_row[b], masked.sum(1)), logp.cpu().double().numpy())
    return total


def zero_shot_cloze(task, data, args):
    """ChID answered by the masked LM, no fine-tuning: the candidate whose tokens get the best mean
    log-probability in the blank (ChID's idioms all have four characters; how many tokens one becomes
    is the vocabulary's doing), and by the sum too. Beside it, the same with the passage removed
    ([CLS] candidate [SEP]): what the model thinks of the idiom alone, so the margin is the context's."""
    torch.manual_seed(args.seed)  # --init random: one random draw, fixed by --seed
    mlm = CMBert(read_config(args.model_dir, CMBertConfig)) if args.init == "random" else CMBert.from_pretrained(args.model_dir)
    mlm = mlm.to(args.device).eval()
    x, start, k, first, n = (data[key] for key in ("dev_x", "dev_start", "dev_k", "dev_first", "dev_n"))
    alone = Padded([[CLS_ID, *x.ids[r, s:s + m], SEP_ID] for r, (s, m) in enumerate(zip(start, k))])
    whole = args.mlm_scoring == "word"
    in_context = candidate_logprob(mlm, x, start, k, whole, args, f"{task} zero-shot")
    no_context = candidate_logprob(mlm, alone, np.ones_like(start), k, whole, args, f"{task} no context")
    right = data["dev_right"]
    hits = lambda score: [right[f + np.argmax(score[f:f + m])] for f, m in zip(first, n)]  # noqa: E731
    return dict(scoring=args.mlm_scoring, items=len(n), chance=data["baseline"], contexts_cut=data["report"]["contexts_cut"]["dev"],
                mean=versus(hits(in_context / k), hits(no_context / k)), sum=versus(hits(in_context), hits(no_context)))


# ------------------------------------------------------------------------------------------
# Span extraction (CMRC2018): windows over long contexts, answers mapped between characters and tokens

def cmrc_windows(tok, ex, max_len, stride, max_question=64):
    """Cut one example into [CLS] question [SEP] context-window [SEP] windows. Each window keeps
    the character offsets of its context tokens; for training, the answer's first token position
    (start, end) or (0, 0) at [CLS] when the answer is not inside the window."""
    q = tok.encode(ex["question"], add_special_tokens=False).ids[:min(max_question, max_len // 4)]
    ctx = tok.encode(ex["context"], add_special_tokens=False)
    room = max_len - len(q) - 3
    a_text, a_start = next(((a, s) for a, s in ex["answers"] if s >= 0), ("", -1))
    a_end = a_start + len(a_text)
    windows = []
    for w0 in range(0, max(1, len(ctx.ids)), stride):
        ids = ctx.ids[w0:w0 + room]
        offsets = ctx.offsets[w0:w0 + room]
        first = len(q) + 2  # position of the first context token in the window
        start = end = 0
        if a_start >= 0:
            inside = [k for k, (s, e) in enumerate(offsets) if s < a_end and e > a_start]
            if inside and offsets[inside[0]][0] <= a_start and offsets[inside[-1]][1] >= a_end:
                start, end = first + inside[0], first + inside[-1]
        windows.append(dict(ids=[CLS_ID] + q + [SEP_ID] + ids + [SEP_ID], first=first, offsets=offsets,
                            start=start, end=end))
        if w0 + room >= len(ctx.ids):
            break
    return windows


def best_span(start_logits, end_logits, window, max_answer=30):
    """Best (score, char_start, char_end) inside the window's context, start <= end."""
    n = len(window["offsets"])
    s = start_logits[window["first"]:window["first"] + n]
    e = end_logits[window["first"]:window["first"] + n]
    score = s[:, None] + e[None, :]
    allowed = torch.triu(torch.ones(n, n, dtype=torch.bool)) & ~torch.triu(torch.ones(n, n, dtype=torch.bool), max_answer)
    score = score.masked_fill(~allowed, float("-inf"))
    k = int(score.argmax())
    i, j = divmod(k, n)
    return float(score.view(-1)[k]), window["offsets"][i][0], window["offsets"][j][1]


def load_spans(task, paths, tok, args):
    hp = task_settings(task, args)
    train = nonempty(read_cmrc(paths["train"]), paths["train"], "questions")
    lost = [ex for ex in train if not any(s >= 0 for _, s in ex["answers"])]  # no answer found in the context
    train = subsample([ex for ex in train if ex not in lost], args)
    dev = nonempty(read_cmrc(paths["dev"]), paths["dev"], "questions")
    unanswered = [ex["id"] for ex in dev if not ex["answers"]]
    if unanswered:
        raise Refused(f"{paths['dev']}: question {unanswered[0]} has no reference answer")
    tok.no_truncation()
    train_w = [w for ex in train for w in cmrc_windows(tok, ex, hp["max_len"], args.doc_stride)]
    dev_w = [cmrc_windows(tok, ex, hp["max_len"], args.doc_stride) for ex in dev]
    off_edges = sum(not on_token_edges(tok, ex) for ex in dev) / len(dev)
    return dict(train=train, dev=dev, train_w=train_w, train_x=Padded([w["ids"] for w in train_w]), dev_w=dev_w,
                baseline=None, report=dict(dev_answers_off_token_edges=off_edges), n_train=len(train), n_dev=len(dev),
                notes=f"{len(train_w)} training windows; {len(lost)} training questions without a locatable answer "
                      f"dropped; {100 * off_edges:.1f}% of dev questions have no "
                      f"answer on token edges (EM cannot reach them)")


def run_spans(task, data, model, hp, seed, args):
    train_w, train_x, dev, dev_w = data["train_w"], data["train_x"], data["dev"], data["dev_w"]
    targets = torch.tensor([[w["start"], w["end"]] for w in train_w])
    flat = [(q, w) for q, ws in enumerate(dev_w) for w in ws]  # every window of every question, batched
    dev_x = Padded([w["ids"] for _, w in flat])

    def batches(bs, epoch):
        for idx in batch_order(train_x.lengths, bs, seed, epoch):
            with args.autocast:
                start, end = model(*train_x.batch(idx, args.device))
            target = targets[idx].to(args.device)
            yield (F.cross_entropy(start, target[:, 0]) + F.cross_entropy(end, target[:, 1])) / 2

    def evaluate():
        best = [(-math.inf, 0, 0)] * len(dev)
        for i in dev_pass(range(0, len(flat), 32), args, task):
            idx = np.arange(i, min(i + 32, len(flat)))
            with args.autocast:
                start, end = (t.cpu() for t in model(*dev_x.batch(idx, args.device)))
            for k, j in enumerate(idx):
                q, w = flat[j]
                best[q] = max(best[q], best_span(start[k], end[k], w))
        em = f1 = 0.0
        for ex, (_, a, b) in zip(dev, best):
            refs = [t for t, _ in ex["answers"]]
            em, f1 = em + cmrc_em(ex["context"][a:b], refs), f1 + cmrc_f1(ex["context"][a:b], refs)
        return f1 / len(dev), em / len(dev)

    return fine_tune(model, batches, len(train_x), evaluate, hp, args, task)


# ------------------------------------------------------------------------------------------
# Retrieval (SimCLUE, the paper's probe): sentence embeddings, InfoNCE, correlations

def embed(encoder, ids, mask):
    """The sentence embedding: mean-pooled final hidden states over the real tokens (fp32)."""
    return mean_pool(encoder(ids, mask).float(), mask)


def info_nce(anchor, positive, negative=None, temperature=0.05):
    """Anchor i must pick positive i among every positive of the batch (the in-batch negatives) and
    every hard negative, by cosine similarity / temperature. A low temperature (0.05, SimCSE's
    choice) sharpens the softmax so that near-misses still cost."""
    cand = positive if negative is None else torch.cat([positive, negative])
    logits = F.normalize(anchor, dim=-1) @ F.normalize(cand, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))


def load_retrieval(task, paths, tok, args):
    """Training rows (anchor, positive, hard negative or None): the label-1 pairs of train.json
    and, when train_rank.json sits beside it, its (query, title, neg_title) triples. Label-0 pairs
    are not used for training (InfoNCE needs a positive for every anchor); dev is every pair."""
    hp = task_settings(task, args)
    pairs = nonempty(read_simclue_pairs(paths["train"]), paths["train"])
    dev = nonempty(read_simclue_pairs(paths["dev"]), paths["dev"])
    if len({label for *_, label, _ in dev}) < 2:
        raise Refused(f"{paths['dev']}: every label is {dev[0][2]}: a correlation with the label is undefined")
    rank_path = os.path.join(os.path.dirname(paths["train"]), "train_rank.json")
    triples = read_simclue_triples(rank_path) if os.path.isfile(rank_path) else []
    rows = subsample([(a, b, None) for a, b, label, _ in pairs if label == 1] + triples, args)
    nonempty(rows, paths["train"], "positive pairs")
    tok.enable_truncation(hp["max_len"])
    enc = lambda texts: Padded([e.ids for e in tok.encode_batch(list(texts))])  # noqa: E731
    has_neg = np.array([n is not None for _, _, n in rows])
    return dict(anchor=enc(r[0] for r in rows), positive=enc(r[1] for r in rows),
                negative=enc(r[2] for r in rows if r[2] is not None), neg_index=np.cumsum(has_neg) - 1,
                has_neg=has_neg, dev_a=enc(d[0] for d in dev), dev_b=enc(d[1] for d in dev),
                dev_y=np.array([d[2] for d in dev]), n_train=len(rows), n_dev=len(dev), baseline=None,
                notes=f"{len(rows)} training rows ({int(has_neg.sum())} with a hard negative), "
                      f"temperature {args.temperature}")


def run_retrieval(task, data, model, hp, seed, args):
    encoder = model.model

    def batches(bs, epoch):
        for idx in batch_order(data["anchor"].lengths, bs, seed, epoch):
            neg = data["neg_index"][idx[data["has_neg"][idx]]]
            with args.autocast:
                a = embed(encoder, *data["anchor"].batch(idx, args.device))
                p = embed(encoder, *data["positive"].batch(idx, args.device))
                n = embed(encoder, *data["negative"].batch(neg, args.device)) if len(neg) else None
            yield info_nce(a, p, n, args.temperature)

    def evaluate():
        cos = []
        for i in dev_pass(range(0, len(data["dev_y"]), 128), args, task):
            idx = np.arange(i, min(i + 128, len(data["dev_y"])))
            with args.autocast:
                a = embed(encoder, *data["dev_a"].batch(idx, args.device))
                b = embed(encoder, *data["dev_b"].batch(idx, args.device))
            cos.append(F.cosine_similarity(a, b, dim=-1))
        cos = torch.cat(cos).cpu().numpy()
        return spearman(cos, data["dev_y"]), pearson(cos, data["dev_y"])

    return fine_tune(model, batches, len(data["anchor"]), evaluate, hp, args, task, score_before=True)


# ------------------------------------------------------------------------------------------
# The kinds of task: how each is read, fine-tuned and scored, and on which model

@dataclass
class Kind:
    load: callable          # (task, paths, tokenizer, args) -> data
    run: callable           # (task, data, model, hp, seed, args) -> (scores per epoch, losses)
    model: type             # the model class fine-tuned (its head)
    metric: str             # what the scores are, first (and second) of each tuple
    baseline: str = "majority class"  # what the baseline is (the table's words for it)
    before: bool = False    # the baseline is the score before fine-tuning (else data["baseline"])
    zero_shot: callable = None  # (task, data, args) -> the task answered with no fine-tuning, its baselines


CLASSIFY = Kind(load_classification, run_classification, CMBertForSequenceClassification, "acc")
KINDS = {"single": CLASSIFY, "pair": CLASSIFY, "csl": CLASSIFY, "wsc": CLASSIFY,
         "choice": Kind(load_choice, run_choice, CMBertForMultipleChoice, "acc", "chance"),
         "cloze": Kind(load_cloze, run_choice, CMBertForMultipleChoice, "acc", "chance", zero_shot=zero_shot_cloze),
         "span": Kind(load_spans, run_spans, CMBertForSpans, "F1 / EM", None),
         "retrieval": Kind(load_retrieval, run_retrieval, CMBert, "Spearman / Pearson", "before fine-tuning",
                           before=True)}


def build_model(task, data, args):
    """The pre-trained weights, or (--init random) the same architecture freshly initialised.
    Retrieval fine-tunes the encoder of the full pre-trained model (CMBert), so a saved retrieval
    model is a whole model (and, saved as an export, a sentence-transformers folder)."""
    cls, overrides = KINDS[TASKS[task]["kind"]].model, {}
    kwargs = dict(num_labels=len(data["labels"])) if cls is CMBertForSequenceClassification else {}
    if issubclass(cls, CMBertForSequenceClassification):  # the classification head, also under multiple choice
        overrides = {k: v for k, v in (("classifier_pooling", args.pooling), ("classifier_dropout", args.dropout))
                     if v is not None}
    if args.init == "random":
        return cls(read_config(args.model_dir, CMBertConfig, **overrides), **kwargs).to(args.device)
    return cls.from_pretrained(args.model_dir, **overrides, **kwargs).to(args.device)


def run_task(task, data, args, tok_path):
    hp, kind = task_settings(task, args), KINDS[TASKS[task]["kind"]]
    zero_shot = dict(zero_shot=kind.zero_shot(task, data, args)) if kind.zero_shot else {}
    if args.zero_shot_only:
        return dict(zero_shot, n_dev=data["n_dev"], settings=hp)
    per_seed = []
    for seed in range(args.seed, args.seed + hp["seeds"]):
        torch.manual_seed(seed)
        model = build_model(task, data, args)
        scores, losses = kind.run(task, data, model, hp, seed, args)
        before = scores.pop(0) if kind.before else None
        r = dict(seed=seed, final=scores[-1][0], best=max(s[0] for s in scores), per_epoch=[list(s) for s in scores],
                 train_loss=losses)
        if len(scores[-1]) > 1:
            r["final_2"] = scores[-1][1]  # EM for CMRC2018, Pearson for SimCLUE
        if before is not None:
            r["before"] = list(before)
        if args.save:
            r["saved"] = save_model(model, task, data, seed, args, tok_path)
        per_seed.append(r)
        del model
    out = aggregate(per_seed, kind.metric)
    out["baseline"] = per_seed[0]["before"] if kind.before else data["baseline"]  # the same for every seed
    out.update(baseline_name=kind.baseline, n_train=data["n_train"], n_dev=data["n_dev"], notes=data["notes"],
               settings=hp, **data.get("report", {}), **zero_shot)  # what the loader measured besides the notes
    return out


# ------------------------------------------------------------------------------------------
# Every setting and file is checked before any work

def parse_args(argv):
    return settings.eval_args(argv, __doc__, TASKS)


def check_settings(tasks, args):
    """The model folder, each task's length (and CMRC2018's stride), the output folders and the
    tokenizer, checked before any work (settings.check_eval)."""
    lengths = {task: task_settings(task, args)["max_len"] for task in tasks}
    return settings.check_eval(args, lengths, [t for t in tasks if TASKS[t]["kind"] == "span"], CMBertConfig)


@script("eval_clue.py")
def main(argv=None):
    args = parse_args(argv)
    args.device = runtime.pick_device(args.device)
    args.dtype = runtime.resolve_dtype(args.device, args.dtype)
    args.autocast = runtime.autocast(args.device, args.dtype)
    args.out = args.out or os.path.join(args.model_dir, "results_clue.json")
    tasks, paths = find_tasks(TASKS, args, only=[t for t in TASKS if KINDS[TASKS[t]["kind"]].zero_shot]
                              if args.zero_shot_only else None)
    tok, tok_path = check_settings(tasks, args)
    data = {task: KINDS[TASKS[task]["kind"]].load(task, paths[task], tok, args) for task in tasks}  # all, before any training
    results = {}
    for task in tasks:
        t0 = time.time()
        results[task] = run_task(task, data.pop(task), args, tok_path)
        results[task]["seconds"] = round(time.time() - t0, 1)
        table = markdown_table(results, args)  # written after every task: a later failure keeps these
        write_json(args.out, dict(model_dir=args.model_dir, init=args.init, seed=args.seed, tasks=results, table=table,
                                  settings={k: v for k, v in vars(args).items() if k not in ("progress", "autocast")}))
    print(table)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
