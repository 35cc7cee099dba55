"""
Pictures: training runs compared from their logs, and the figures of docs/method.md, drawn by the
lecture's own functions.

    python plot.py out_a out_b ... [--out compare.png]   # several runs, labelled by how their settings differ
    python plot.py --figures docs/figures                # every figure of docs/method.md, redrawn

train.py draws each run's own picture (train.png) at every checkpoint (support/plots.py).

The figures call prepare.py, train.py and cmbert.py and draw what those return, so they cannot
drift from the code; notebooks/cmbert_course.ipynb builds them one by one. They need a font with
Chinese glyphs (support/figures.py finds one, or says what to install) and a tokenizer: the default
dataset's (python prepare.py), or, where there is none, one trained in a temporary folder on a small
sample of the default corpus (a few seconds; the committed figures use the default dataset's).
"""
import dataclasses, math, os, tempfile, unicodedata
from collections import Counter

import numpy as np
import torch

import cmbert
import prepare
import train
from support.errors import script
from support.figures import COLORS, blank, cjk_font, new, save
from support.files import atomic_path
from support.plots import compare
from support.settings import ArgParser
from support.tokens import CLS_ID, MASK_ID, N_BYTE_TOKENS, SPECIAL_TOKENS, load_tokenizer, token_spans

ROOT = os.path.dirname(os.path.abspath(__file__))
# §2's sentence: with the default 32k vocabulary one token (在北京) crosses a word boundary and two
# words (北京大学, 计算机科学) are split into several tokens
SENTENCE = "他在北京大学学习计算机科学。"
MASK_TEXT = "他在北京大学学习计算机科学。今天天气很好，我们一起去公园散步。"  # one document, one window


def config(name):
    """A config file of config/ read by train.py's own parser (defaults, then the file)."""
    return train.parse_args([os.path.join(ROOT, "config", f"{name}.py")])[0]


def reference_runs():
    """The two runs the schedule figures compare: the default one and the paper's configuration."""
    return [("the default run (config/tiny.py)", config("tiny")), ("the paper's (config/paper_large.py)", config("paper_large"))]


# ------------------------------------------------------------------------------------------
# Data for the figures and the notebook

def sample_data(root, chars=150_000, vocab_size=4096):
    """A small dataset where the default one (data/default) is not there: the first documents of each
    file of the default corpus, about `chars` characters of each (a few People's Daily documents of
    ~9k tokens, a few thousand reviews), one document per block of a text file, prepared by prepare.py
    into root/data with a `vocab_size` vocabulary. Deterministic; seconds, not minutes; reused when
    it exists. Returns the dataset's directory."""
    out = os.path.join(root, "data")
    if os.path.exists(os.path.join(out, "meta.json")):
        return out
    files, readers = prepare.default_corpus()
    os.makedirs(root, exist_ok=True)
    src = os.path.join(root, "corpus.txt")
    with atomic_path(src) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for path in files:
                n, doc = 0, []
                for piece, last in prepare.normalized_documents([path], ["text"], "utf-8", readers=readers):
                    doc.append(piece)
                    if last:
                        f.write("".join(doc) + "\n\n")
                        n, doc = n + sum(map(len, doc)), []
                        if n >= chars:
                            break
    prepare.main(["--input", src, "--out_dir", out, "--vocab_size", str(vocab_size), "--doc_format", "blank",
                  "--workers", "1", "--quiet"])
    return out


def encode(tok, texts):
    """Documents as prepare.py stores them: [CLS] tokens [SEP] each, end to end, with the unit flags."""
    prepare.init_worker(tok.to_str(), "rjieba")
    ids, flags, _, _ = prepare.encode_chunk(texts, [1] * len(texts), [1] * len(texts))
    return ids.astype(np.int64), flags


def shown(tok, i, width=8):
    """A token as a figure shows it (▁, the tokenizer's space, as ␣)."""
    t = (tok.id_to_token(int(i)) or "?").replace("▁", "␣")
    return t if len(t) <= width else t[:width - 1] + "…"


def box(ax, x, y, w, text, face="white", edge=COLORS["grey"], color="black", size=11, h=0.7, **kw):
    """A labelled cell from x to x + w, centred on row y (characters, words, tokens, layers)."""
    from matplotlib.patches import Rectangle
    ax.add_patch(Rectangle((x, y - h / 2), w, h, facecolor=face, edgecolor=edge, lw=0.8, **kw))
    ax.text(x + w / 2, y, text, ha="center", va="center", color=color, fontsize=size)


def rows_axis(ax, labels, width):
    """An axis of labelled rows, top to bottom, with no x scale (the cells carry their text)."""
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(len(labels) - 0.4, -0.6)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xticks([])
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)


def mark_stages(ax, plan):
    """Dotted verticals where a stage begins (train.stages' first step of each later stage)."""
    for k, st in enumerate(plan[1:], 2):
        ax.axvline(st.first, color=COLORS["grey"], ls=":", lw=1)
        ax.text(st.first, 1.0, f" stage {k}: {st.seq_len:,}-token windows", transform=ax.get_xaxis_transform(),
                va="top", ha="right", rotation=90, fontsize=7, color=COLORS["black"])


def over_steps(ax, name, cfg, ylabel, top, legend):
    """The frame of a schedule drawn over one run's steps: its stage switches, labels and title."""
    mark_stages(ax, train.stages(cfg))
    ax.set_ylim(0, top)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    ax.set(xlabel="step", ylabel=ylabel)
    ax.set_title(f"{name}: {cfg.max_steps:,} steps", fontsize=9)
    ax.legend(loc=legend)


def steps_of(cfg, n=1500):
    """The steps a schedule is drawn at: every step of a short run, n of a long one, and every stage's first."""
    plan = train.stages(cfg)
    every = range(cfg.max_steps + 1) if cfg.max_steps <= 5 * n else np.linspace(0, cfg.max_steps, n).astype(int)
    return sorted(set(map(int, every)) | {st.first for st in plan} | {max(0, st.first - 1) for st in plan})


# ------------------------------------------------------------------------------------------
# §1-2: the vocabulary, whole-word units, masking

def fig_vocabulary(tok):
    """§1: what a 32k BPE vocabulary holds: its entries by length in characters, and the first ones of
    each length (ids follow the order the merges were learned in: the most frequent pairs first)."""
    han = lambda t: all("\u4e00" <= c <= "\u9fff" for c in t)  # noqa: E731
    kinds, examples = Counter(), {}
    for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
        if i < len(SPECIAL_TOKENS) + N_BYTE_TOKENS:
            kinds["special" if i < len(SPECIAL_TOKENS) else "bytes", "other"] += 1
            continue
        n = min(len(t), 5)
        kinds[n, "han" if han(t) else "other"] += 1
        if n > 1 and han(t) and len(examples.setdefault(n, [])) < 8:
            examples[n].append(t)
    fig, ax = new(1, 2, size=(10, 3.4), width_ratios=[1.2, 1])
    a, b = ax[0]
    cats = ["special", "bytes", 1, 2, 3, 4, 5]
    names = ["special", "bytes\n<0x..>", "1", "2", "3", "4", "5+"]
    bottom = np.zeros(len(cats))
    for part, color, label in [("han", COLORS["blue"], "Chinese characters only"), ("other", COLORS["orange"],
                                                                                     "other (Latin, digits, symbols, ▁)")]:
        h = np.array([kinds[c, part] for c in cats])
        a.bar(range(len(cats)), h, bottom=bottom, color=color, label=label)
        bottom += h
    for k, v in enumerate(bottom):
        a.text(k, v, f"{int(v):,}", ha="center", va="bottom", fontsize=7)
    a.set_xticks(range(len(cats)), names)
    a.set_xlabel("entry length in characters")
    a.set_ylabel("vocabulary entries")
    a.set_title(f"the vocabulary: {tok.get_vocab_size():,} entries")
    a.set_ylim(0, bottom.max() * 1.3)
    a.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    a.legend(loc="upper right")
    b.axis("off")
    b.set_title("the first entries learned, by length (ids follow the merges)")
    for k, n in enumerate(sorted(examples)):
        b.text(0, 1 - 0.25 * (k + 0.5), f"{n}{'+' if n == 5 else ''} characters:", transform=b.transAxes, fontsize=8,
               va="center")
        b.text(0.3, 1 - 0.25 * (k + 0.5), "  ".join(examples[n][:8 if n < 3 else 5]), transform=b.transAxes,
               fontsize=11, va="center")
    return fig


def fig_units(tok, sentence=SENTENCE, segmenter="rjieba"):
    """§2: one sentence as characters, jieba words, BPE tokens and whole-word units: prepare.align
    on the segmenter's words and the tokenizer's offsets, exactly as prepare.py computes the flags."""
    text = unicodedata.normalize("NFKC", sentence)  # as prepare.py normalises every document
    words = prepare.segmenter_of(segmenter)(text)
    enc = tok.encode(text, add_special_tokens=False)
    _, n_tok, s, e = token_spans(tok, None, [text])  # each token's span of characters, as prepare.py reads them
    begins, cross = prepare.align([text], s, e, n_tok, [words])
    starts = np.cumsum([0] + [len(w) for w in words])
    unit = np.cumsum(begins) - 1
    units = [(min(s for (s, _), u in zip(enc.offsets, unit) if u == k), max(e for (_, e), u in zip(enc.offsets, unit) if u == k))
             for k in range(unit[-1] + 1)]
    split = [sum(s < b and e > a for s, e in enc.offsets) > 1 for a, b in zip(starts, starts[1:])]
    glued = [sum(a <= s < b for s in starts[:-1]) > 1 for a, b in units]
    fig, ax = new(size=(2.6 + 0.62 * len(text), 3.0))
    ax = ax[0, 0]
    labels = ["characters", "jieba words", "BPE tokens", "whole-word units\n(prepare.py's flags)"]
    rows_axis(ax, labels, len(text))
    for c, ch in enumerate(text):
        box(ax, c + 0.05, 0, 0.9, ch)
    for (a, b), w, sp in zip(zip(starts, starts[1:]), words, split):
        box(ax, a + 0.05, 1, b - a - 0.1, w, face=COLORS["sky"] if sp else "white")
    for (s, e), cr in zip(enc.offsets, cross):
        box(ax, s + 0.05, 2, e - s - 0.1, text[s:e], face=COLORS["vermillion"] if cr else "white",
            color="white" if cr else "black")
    for (a, b), gl in zip(units, glued):
        box(ax, a + 0.05, 3, b - a - 0.1, text[a:b], face=COLORS["yellow"] if gl else "white")
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(facecolor=COLORS["sky"], edgecolor=COLORS["grey"], label="a word split over several tokens"),
                       Patch(facecolor=COLORS["vermillion"], label="a token crossing a word boundary"),
                       Patch(facecolor=COLORS["yellow"], edgecolor=COLORS["grey"],
                             label="a unit glued from several words by such a token")],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, frameon=False)
    ax.set_title(f"{len(text)} characters, {len(words)} words, {len(enc.ids)} tokens, {len(units)} units: "
                 f"a unit begins where a word begins at a token's first character")
    return fig


def actions(ids, inputs, labels):
    """What the model sees at each position: 0 not chosen, 1 [MASK], 2 a random token, 3 unchanged (scored)."""
    chosen = labels != -100
    return np.where(~chosen, 0, np.where(inputs == MASK_ID, 1, np.where(inputs != ids, 2, 3)))


def fig_masking(tok, text=MASK_TEXT, rate=0.3, seed=None):
    """§2: one window masked three ways by train.make_batch (which calls train.whole_word_mask):
    whole words and single tokens at the same rate with the 80/10/10 actions, and validation's mask
    (whole words at train.VAL_RATE, every one [MASK]). seed=None takes the first seed whose two
    training masks both show all three actions, so the picture has one of each."""
    ids, flags = encode(tok, [text])
    meta = dict(mask_id=MASK_ID, cls_id=CLS_ID, tokenizer_size=tok.get_vocab_size())
    T = len(ids)

    def masked(rate, seed, **kw):
        inputs, labels, _ = train.make_batch((ids, flags), [0], [rate], [np.random.default_rng(seed)], meta, T, **kw)
        return inputs[0].numpy(), actions(ids, inputs[0].numpy(), labels[0].numpy())
    for seed in [seed] if seed is not None else range(10_000):
        rows = [masked(rate, seed), masked(rate, seed, whole_word=False)]
        if all({1, 2, 3} <= set(a.tolist()) for _, a in rows):
            break
    rows.append(masked(train.VAL_RATE, seed, mask_only=True))
    widths = [max(2.2, len(shown(tok, i)) + 0.6) for i in ids]
    x = np.concatenate(([0], np.cumsum(widths)))
    unit = np.cumsum(flags) - 1
    fig, ax = new(size=(1.6 + 0.2 * x[-1], 3.6))
    ax = ax[0, 0]
    n_real = int((ids > MASK_ID).sum())
    labels = ["the window\n(a bracket: one unit)"] + [
        f"{name}\n{int((a > 0).sum())} of {n_real} tokens chosen" for name, (_, a) in
        zip([f"whole words, {rate:.0%}", f"single tokens, {rate:.0%}\n(--whole_word=False)",
             f"validation: whole words,\n{train.VAL_RATE:.0%}, all [MASK]"], rows)]
    rows_axis(ax, labels, x[-1])
    faces = {0: ("white", "black"), 1: (COLORS["blue"], "white"), 2: (COLORS["vermillion"], "white"), 3: (COLORS["yellow"], "black")}
    for k, i in enumerate(ids):
        special = i <= MASK_ID
        box(ax, x[k] + 0.1, 0, widths[k] - 0.2, shown(tok, i), size=10, face=COLORS["light"] if special else "white")
        for r, (inputs, act) in enumerate(rows, 1):
            face, color = faces[int(act[k])]
            box(ax, x[k] + 0.1, r, widths[k] - 0.2, shown(tok, inputs[k]), size=10 if act[k] != 1 else 7,
                face=COLORS["light"] if special else face, color=color)
    for u in range(unit[-1] + 1):  # a bracket under every unit of the window
        a, b = x[np.flatnonzero(unit == u)[[0, -1]] + [0, 1]]
        ax.plot([a + 0.25, a + 0.25, b - 0.25, b - 0.25], [0.45, 0.5, 0.5, 0.45], color=COLORS["black"], lw=1)
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(facecolor=COLORS["blue"], label="[MASK] (80% of chosen units)"),
                       Patch(facecolor=COLORS["vermillion"], label="a random token (10%)"),
                       Patch(facecolor=COLORS["yellow"], label="unchanged (10%)"),
                       Patch(facecolor="white", edgecolor=COLORS["grey"], label="not chosen (not scored)")],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=4, frameon=False)
    ax.set_title(f"train.make_batch on one {T}-token window (seed {seed}): a chosen unit is shown one way, all "
                 f"its tokens alike; every chosen position is scored")
    return fig


# ------------------------------------------------------------------------------------------
# §3-5: the schedules and the stages

def fig_mask_rate(runs):
    """§3: train.mask_rate over the steps of each run, with validation's fixed rate."""
    fig, ax = new(1, len(runs), size=(5 * len(runs), 2.9))
    for a, (name, cfg) in zip(ax[0], runs):
        steps = steps_of(cfg)
        a.plot(steps, [100 * train.mask_rate(s, cfg) for s in steps], color=COLORS["blue"], label="training (train.mask_rate)")
        a.axhline(100 * train.VAL_RATE, color=COLORS["orange"], ls="--", label="validation (train.VAL_RATE, fixed)")
        over_steps(a, name, cfg, "masking rate (%)", 35, "lower left")
    return fig


def fig_learning_rate(runs):
    """§4: train.learning_rate over the steps of each run: the damped cosine and, beside it, the plain
    cosine of the ablation (--lr_schedule=cosine), after the same warm-up."""
    fig, ax = new(1, len(runs), size=(5 * len(runs), 2.9))
    for a, (name, cfg) in zip(ax[0], runs):
        steps = steps_of(cfg)
        plain = dataclasses.replace(cfg, lr_schedule="cosine")
        a.plot(steps, [train.learning_rate(s, cfg) for s in steps], color=COLORS["blue"],
               label=f"damped cosine (N = {cfg.lr_cycles}, γ = {cfg.lr_damping:g})")
        a.plot(steps, [train.learning_rate(s, plain) for s in steps], color=COLORS["orange"], ls="--",
               label="plain cosine (--lr_schedule=cosine)")
        over_steps(a, name, cfg, "learning rate", cfg.lr_max * 1.05, "upper right")
    return fig


def fig_stage_plans(runs):
    """§5: the stage plan of each config (train.stages, stage_at, step_tokens) over the fraction of its
    run: window length, windows per step, tokens per step and tokens seen."""
    fig, ax = new(2, 2, size=(10, 5.2))
    ax = ax.ravel()
    looks = [(COLORS["blue"], "-", 3.5), (COLORS["orange"], "--", 2.2), (COLORS["green"], ":", 2.2), (COLORS["purple"], "-.", 1.5)]
    for (name, cfg), (color, ls, lw) in zip(runs, looks):
        plan = train.stages(cfg)
        steps = steps_of(cfg, 600)[:-1]
        frac = [s / cfg.max_steps for s in steps]
        st = [train.stage_at(s, plan)[1] for s in steps]
        seen = [train.step_tokens(s + 1, plan, cfg.grad_accum) for s in steps]
        per_step = [after - train.step_tokens(s, plan, cfg.grad_accum) for s, after in zip(steps, seen)]
        label = f"{name}: {cfg.max_steps:,} steps"
        for a, ys in zip(ax, [[x.seq_len for x in st], [x.batch_size * cfg.grad_accum for x in st], per_step, seen]):
            a.plot(frac, ys, color=color, ls=ls, lw=lw, label=label, drawstyle="steps-post" if a is not ax[3] else "default")
        for a, ys in zip(ax[:3], [[x.seq_len for x in st], [x.batch_size * cfg.grad_accum for x in st], per_step]):
            for k, st_k in enumerate(plan):  # each stage's value, written beside its line
                y = ys[steps.index(st_k.first)]
                a.text(st_k.start + 0.01, y, f"{y:,}", fontsize=7, va="bottom", color=color)
    for a, title in zip(ax, ["window length (tokens)", "windows per step (batch_size × grad_accum)",
                             "tokens per step", "tokens seen"]):
        a.set_yscale("log", base=2 if a in (ax[0], ax[1]) else 10)
        a.set_title(title, fontsize=9)
        a.set_xlabel("fraction of the run (step / max_steps)")
    for a in ax[:3]:
        a.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    ax[0].legend(loc="upper left")
    return fig


def fig_rope(thetas=(10_000.0, 80_000.0), positions=8192, head_dim=64):
    """§5: what RoPE's theta does, from cmbert's own code (Encoder.rotary's angles, rope's rotation):
    how many positions each frequency pair of a 64-wide head takes to turn once, and the expected
    similarity of a vector with itself placed Δ positions away."""
    enc = cmbert.Encoder(cmbert.CMBertConfig(vocab_size=64, n_layer=1, n_head=1, n_embd=head_dim))
    pos = torch.arange(positions + 1)
    fig, ax = new(1, 2, size=(10, 3.3))
    a, b = ax[0]
    for theta, color in zip(thetas, [COLORS["orange"], COLORS["blue"]]):
        cos, sin = (t[:, 0, 0] for t in enc.rotary(pos, torch.float32, theta)["global"])
        per_position = torch.atan2(sin[1], cos[1])  # each pair's angle per position (all below pi)
        wavelength = (2 * math.pi / per_position).numpy()
        slow = int((wavelength > positions).sum())
        a.plot(range(len(wavelength)), wavelength, "o-", ms=3, color=color,
               label=f"θ = {theta:,.0f}: {slow} of {len(wavelength)} pairs turn less than once in {positions:,}")
        # for a vector q with independent zero-mean coordinates, E[q · R(Δ) q] is proportional to
        # the mean cosine over the pairs: exactly what rotating the all-ones vector gives
        ones = torch.ones(len(pos), head_dim)
        sim = (cmbert.rope(ones, cos, sin) * ones).sum(-1).numpy() / head_dim
        neg = int(np.argmax(sim < 0)) if (sim < 0).any() else None
        b.plot(pos.numpy(), sim, color=color, lw=0.5, alpha=0.35)
        b.plot(pos.numpy()[63:-64], np.convolve(sim, np.ones(128) / 128, "valid"), color=color, lw=1.8,
               label=f"θ = {theta:,.0f}" + (f": first below 0 at Δ = {neg:,}" if neg else ""))
        if neg:
            b.axvline(neg, color=color, ls=":", lw=1)
    for n in (1024, positions):
        a.axhline(n, color=COLORS["grey"], ls=":", lw=1)
        a.text(len(wavelength) - 1, n, f"{n:,} positions", ha="right", va="bottom", fontsize=7)
    a.set_yscale("log")
    a.set_xlabel(f"frequency pair i (head size {head_dim})")
    a.set_ylabel("positions per full turn")
    a.set_title("each pair turns by θ^(−2i/d) per position", fontsize=9)
    a.legend(loc="upper left")
    b.axhline(0, color=COLORS["grey"], lw=0.5)
    b.set_xlabel("distance Δ (positions)")
    b.set_ylabel("expected q · R(Δ)q / |q|²")
    b.set_title("the same vector Δ positions away (bold: mean over 128 positions)", fontsize=9)
    b.legend(loc="upper right")
    return fig


def fig_long_window(runs):
    """§5: the long-window penalty's positions, from each config's stages (train.stages): a validation
    document longer than twice the first stage's length T1, its long window (the last stage's length)
    from its start, near positions (< T1) and far ones (>= T1), and the near positions once more in a
    short window of T1 tokens, with the same mask and the same tokens."""
    fig, ax = new(len(runs), 1, size=(10, 1.9 * len(runs)))
    for a, (name, cfg) in zip(ax[:, 0], runs):
        plan = train.stages(cfg)
        T1, TL = plan[0].seq_len, cfg.eval_long_len or plan[-1].seq_len
        end = TL * 1.18
        a.set_xlim(0, end)
        a.set_ylim(2.6, -0.6)
        a.set_yticks([0, 1, 2], ["a long document", f"long window ({TL:,})", f"short window ({T1:,})"])
        box(a, 0, 0, end, f"longer than 2 × T1 = {2 * T1:,} tokens, it goes on …", face=COLORS["light"], size=8)
        box(a, 0, 1, T1, "near", face=COLORS["blue"], color="white", size=8)
        box(a, T1, 1, TL - T1, f"far: positions {T1:,} to {TL - 1:,}", face=COLORS["orange"], size=8)
        box(a, 0, 2, T1, "near", face=COLORS["sky"], size=8)
        a.text(T1 * 1.3, 2, "penalty = loss(near, long window) − loss(near, short window)", va="center", fontsize=8)
        a.axvline(T1, color=COLORS["black"], ls=":", lw=1)
        a.set_xlabel("position in the document (RoPE position)")
        a.set_title(f"{name}: T1 = {T1:,} (first stage), long window = {TL:,} (last stage)", fontsize=9)
        a.tick_params(axis="y", length=0)
    return fig


# ------------------------------------------------------------------------------------------
# §6-7: attention and the model

def fig_attention(T=256, docs=(180, 70, 120, 200), start=100):
    """§6: which keys each query may attend to in one packed training window, a global and a local
    layer: train.make_batch cuts the window and finds the documents ([CLS] and the row's edges),
    Encoder.layout places every token, cmbert.dense_mask gives the boolean mask (the rule every
    attention backend is tested against; long rows take local_attention's O(T·w) path to the same)."""
    ids = np.concatenate([[CLS_ID] + [MASK_ID + 1] * (n - 2) + [cmbert.CMBertConfig.sep_id] for n in docs])
    meta = dict(mask_id=MASK_ID, cls_id=CLS_ID, tokenizer_size=MASK_ID + 2)
    inputs, _, cu = train.make_batch((ids, np.ones_like(ids)), [start], [0.0], [np.random.default_rng(0)], meta, T)
    cfg = cmbert.CMBertConfig(vocab_size=64, n_layer=4, n_head=1, n_embd=8)  # the tiny model's layer pattern
    layout = cmbert.Encoder(cfg).layout(inputs, None, cu)
    kinds = [[i for i in range(cfg.n_layer) if cfg.is_global(i) == g] for g in (True, False)]
    masks = [cmbert.dense_mask(layout, None, T, "cpu"), cmbert.dense_mask(layout, cfg.local_window // 2, T, "cpu")]
    fig = blank(size=(10, 5.6))
    grid = fig.add_gridspec(2, 2, height_ratios=[4, 1])
    from matplotlib.colors import ListedColormap
    lengths = np.diff(cu.numpy())
    for k, (mask, layers, what) in enumerate(zip(masks, kinds, ["same document", f"same document and |i − j| ≤ "
                                                                 f"{cfg.local_window // 2}"])):
        a = fig.add_subplot(grid[0, k])
        m = mask[0, 0].numpy()
        a.imshow(m, cmap=ListedColormap(["white", COLORS["blue"]]), interpolation="nearest")
        for edge in cu.numpy()[1:-1]:
            a.axhline(edge - 0.5, color=COLORS["vermillion"], lw=0.6)
            a.axvline(edge - 0.5, color=COLORS["vermillion"], lw=0.6)
        a.set_title(f"{'global' if k == 0 else 'local'} layer (layers {', '.join(map(str, layers))} of 4): {what}\n"
                    f"{int(m.sum()):,} of {T * T:,} pairs allowed", fontsize=9)
        a.set_xlabel("key position j")
        a.set_ylabel("query position i")
    a = fig.add_subplot(grid[1, :])
    a.plot(range(T), layout.pos[0].numpy(), color=COLORS["black"], lw=1)
    for edge in cu.numpy()[1:-1]:
        a.axvline(edge - 0.5, color=COLORS["vermillion"], lw=0.6)
    a.set_xlim(-0.5, T - 0.5)
    a.set_xlabel("position in the window")
    a.set_ylabel("RoPE position")
    a.set_title(f"one {T}-token window, documents of {', '.join(map(str, lengths))} tokens (the first began before "
                f"the window): positions restart in each document", fontsize=9)
    return fig


def fig_architecture(presets=("tiny", "base", "large"), vocab_size=32000):
    """§6-7: the presets of cmbert.py: which layers are global (CMBertConfig.is_global) and where the
    parameters are, counted on the model itself (built on the meta device: shapes, no memory)."""
    groups = ["embedding (tied decoder)", "attention", "GeGLU MLP", "norms", "MLM head"]
    fig, ax = new(1, 2, size=(10, 2.6), width_ratios=[1.1, 1])
    a, b = ax[0]
    for r, name in enumerate(presets):
        cfg = cmbert.config_from_preset(name, vocab_size=vocab_size)
        for i in range(cfg.n_layer):
            box(a, i, r, 1, "", face=COLORS["blue"] if cfg.is_global(i) else COLORS["sky"], edge="white", h=0.6)
        with torch.device("meta"):
            model = cmbert.CMBert(cfg)
        counts = Counter()
        for pname, p in model.named_parameters():
            counts[groups[0] if "tok_embeddings" in pname else groups[1] if ".attn." in pname else groups[2]
                   if ".mlp." in pname else groups[4] if pname.startswith(("head.", "decoder.")) else groups[3]] += p.numel()
        total = sum(counts.values())
        left = 0
        for g, color in zip(groups, [COLORS["orange"], COLORS["blue"], COLORS["green"], COLORS["grey"], COLORS["purple"]]):
            b.barh(r, counts[g] / total, left=left, color=color, label=g if r == 0 else None)
            if counts[g] / total > 0.06:
                b.text(left + counts[g] / total / 2, r, f"{counts[g] / total:.0%}", ha="center", va="center",
                       color="white" if g != groups[3] else "black", fontsize=8)
            left += counts[g] / total
        b.text(1.01, r, f"{total / 1e6:,.1f}M", va="center", fontsize=8)
    a.set_xlim(-0.2, 28.2)
    a.set_ylim(len(presets) - 0.5, -0.5)
    a.set_yticks(range(len(presets)), [f"{p}: {cmbert.PRESETS[p]['n_layer']} layers" for p in presets])
    a.set_xlabel("layer (dark: global, light: local; every third is global, and the last)")
    a.set_title("which layers attend globally", fontsize=9)
    b.set_ylim(len(presets) - 0.5, -0.5)
    b.set_yticks(range(len(presets)), [f"{p} × {cmbert.PRESETS[p]['n_embd']}" for p in presets])
    b.set_xlim(0, 1.12)
    b.set_xlabel(f"share of the parameters ({vocab_size:,}-token vocabulary)")
    b.set_title("where the parameters are", fontsize=9)
    b.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, frameon=False)
    return fig


def fig_validation(scores, title="validation"):
    """Scores of train.evaluate (or train.long_documents) next to their no-context baselines on the
    same positions: the training unigram's cross-entropy, and always the most frequent token.
    Accuracies carry their binomial standard error over the n scored positions."""
    import textwrap
    names = list(scores)
    fig, ax = new(1, 2, size=(max(7.0, 4 + 1.6 * len(names)), 3.2))
    x = np.arange(len(names))
    n = np.array([scores[k]["n"] for k in names])
    for a, (model, base, label, base_label) in zip(ax[0], [
            ("loss", "unigram_ce", "MLM loss (nats)", "train unigram, no context"),
            ("acc", "top_acc", "accuracy", "always the most frequent token")]):
        top = 0
        for dx, key, color, name in [(-0.2, model, COLORS["blue"], "the model"), (0.2, base, COLORS["orange"], base_label)]:
            ys = np.array([scores[k][key] for k in names])
            se = np.sqrt(ys * (1 - ys) / n) if key.endswith("acc") else np.zeros(len(ys))
            a.bar(x + dx, ys, 0.4, yerr=se if key.endswith("acc") else None, capsize=3, color=color, label=name)
            for xi, y, e in zip(x + dx, ys, se):
                a.text(xi, y + e, f"{y:.1%}" if key.endswith("acc") else f"{y:.3f}", ha="center", va="bottom", fontsize=7)
            top = max(top, (ys + se).max())
        a.set_xticks(x, [textwrap.fill(k, 16) + f"\n({scores[k]['n']:,} positions)" for k in names], fontsize=8)
        a.set_xlim(-0.7, len(names) - 0.3)
        a.set_ylim(0, 1.4 * top)
        a.set_ylabel(label)
        a.legend(loc="upper right")
    fig.suptitle(f"{title}: masked positions only, each next to its baseline on the same positions\n"
                 f"(accuracy ± its binomial standard error over the positions)", fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------

def figure_makers(tok):
    """Every figure of docs/method.md: file name -> a function that draws it."""
    runs = reference_runs()
    plans = runs[:1] + [("config/base.py", config("base"))] + runs[1:]
    return {"vocabulary.png": lambda: fig_vocabulary(tok), "units.png": lambda: fig_units(tok),
            "masking.png": lambda: fig_masking(tok), "mask_rate.png": lambda: fig_mask_rate(runs),
            "learning_rate.png": lambda: fig_learning_rate(runs), "stages.png": lambda: fig_stage_plans(plans),
            "rope.png": fig_rope, "long_window.png": lambda: fig_long_window(runs),
            "attention.png": fig_attention, "architecture.png": fig_architecture}


def figures(out_dir, tokenizer):
    """Draw every figure into out_dir; the tokenizer's file, or None for one trained on a sample."""
    cjk_font()  # no font for Chinese: say so before any work
    with tempfile.TemporaryDirectory() as tmp:
        if tokenizer is None:
            print("no tokenizer given and no data/default/tokenizer.json: training one on a sample of the default corpus "
                  "(python prepare.py makes the default one)")
            tokenizer = os.path.join(sample_data(tmp), "tokenizer.json")
        tok = load_tokenizer(tokenizer)
        os.makedirs(out_dir, exist_ok=True)
        for name, make in figure_makers(tok).items():
            save(make(), os.path.join(out_dir, name))
            print(f"wrote {os.path.join(out_dir, name)}")


@script("plot.py")
def main(argv=None):
    p = ArgParser("plot.py", __doc__)
    p.add_argument("runs", nargs="*", help="run directories (each with the log.jsonl train.py writes)")
    p.add_argument("--out", default="compare.png", help="the picture to write")
    p.add_argument("--figures", metavar="DIR", help="draw the figures of docs/method.md into DIR instead")
    p.add_argument("--tokenizer", help="the tokenizer the figures show (default: data/default/tokenizer.json if it "
                                       "exists, else one trained on a sample of the default corpus)")
    args = p.parse_args(argv)
    if args.figures:
        default = "data/default/tokenizer.json"
        figures(args.figures, args.tokenizer or (default if os.path.exists(default) else None))
        return
    if not args.runs:
        p.error("give run directories to compare, or --figures DIR")
    compare(args.runs, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
