"""train.py: whole-word masking, schedules, stages, packing, resume, torchrun and bad settings."""
import json, os, signal, subprocess, sys, time

import numpy as np
import pytest
import torch
from conftest import ROOT

import train

SMALL = ["--eval_windows=2", "--lr_warmup=0.2", "--progress=False", "--demo=False"]
DTYPES = ["float32", "bfloat16"]  # a CPU with native bf16 trains in bf16 by default (--dtype=auto): test both everywhere


def one_stage(T=128, B=2):
    return f"--stages=[(0, {T}, {B}, 1e4)]"


# three stages, each with its own length, batch and global RoPE theta
THREE = "--stages=[(0, 64, 2, 1e4), (0.4, 128, 1, 4e4), (0.7, 256, 1, 8e4)]"


def run_train(*args, env=None, torchrun=0):
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
                              if torchrun else []) + [os.path.join(ROOT, "train.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def read_log(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


@pytest.fixture(scope="module")
def data(tiny_data):
    return train.load_data(str(tiny_data))


@pytest.mark.parametrize("rate", [0.15, 0.3])
def test_whole_word_masking(data, rate):
    meta, d = data
    inputs, labels, cu = train.make_batch(d["train"], [0, 3000, 6000, 9000], [rate] * 4,
                                          [np.random.default_rng(i) for i in range(4)], meta, 1024)
    ids = np.stack([train.window(*d["train"], s, 1024)[0] for s in [0, 3000, 6000, 9000]])
    flags = np.stack([train.window(*d["train"], s, 1024)[1] for s in [0, 3000, 6000, 9000]])
    labels, inputs = labels.numpy(), inputs.numpy()
    masked = labels != -100
    special = ids <= meta["mask_id"]
    assert not (masked & special).any(), "special tokens are never masked"
    assert abs(masked.sum() / (~special).sum() - rate) < 0.01, "realised rate within 1 point of the target"
    assert (labels[masked] == ids[masked]).all()
    # whole units: every token of a unit shares its first token's fate, and its 80/10/10 action
    for row in range(4):
        unit = np.cumsum(flags[row]) - 1
        for u in np.unique(unit[masked[row]]):
            assert masked[row][unit == u].all()
            shown = inputs[row][unit == u]
            assert (shown == meta["mask_id"]).all() or (shown != meta["mask_id"]).all()
    # 80 / 10 / 10 (per unit; checked loosely on the token shares)
    is_mask = inputs[masked] == meta["mask_id"]
    kept = inputs[masked] == ids[masked]
    assert 0.7 < is_mask.mean() < 0.9 and 0.03 < kept.mean() < 0.2
    assert (inputs[~masked] == ids[~masked]).all()


def test_packing_boundaries(data):
    meta, d = data
    starts = [100, 3000]
    _, _, cu = train.make_batch(d["train"], starts, [0.15, 0.15], [np.random.default_rng(0)] * 2, meta, 512)
    ids = np.concatenate([train.window(*d["train"], s, 512)[0] for s in starts])
    cls = set(np.flatnonzero(ids == meta["cls_id"]).tolist())
    assert set(cu.tolist()) == cls | {0, 512, 1024}
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == 1024


def test_same_global_batch_whatever_the_world_size(data):
    meta, d = data
    cfg = train.TrainConfig(seed=3)
    whole = train.train_batch(d, meta, cfg, step=7, micro=0, rank=0, world=1, B=4, T=128)[0]
    halves = [train.train_batch(d, meta, cfg, step=7, micro=0, rank=r, world=2, B=4, T=128)[0] for r in (0, 1)]
    assert torch.equal(whole, torch.cat(halves))
    quarters = [train.train_batch(d, meta, cfg, step=7, micro=0, rank=r, world=4, B=4, T=128)[0] for r in range(4)]
    assert torch.equal(whole, torch.cat(quarters))
    # micro-batches are rows of the same global list: 2 micro-steps of 2 are the 4 rows of one
    micro = [train.train_batch(d, meta, cfg, step=7, micro=m, rank=0, world=1, B=2, T=128)[0] for m in (0, 1)]
    assert torch.equal(whole, torch.cat(micro))
    assert not torch.equal(whole, train.train_batch(d, meta, cfg, 8, 0, 0, 1, 4, 128)[0])


def test_schedules_at_their_defining_points():
    cfg = train.TrainConfig(max_steps=1000, mask_min=0.15, mask_max=0.3, mask_warmup=0.05, lr_max=1e-3,
                            lr_min=1e-5, lr_warmup=0.1, lr_cycles=2, lr_damping=0.5)
    assert train.mask_rate(0, cfg) == pytest.approx(0.15)
    assert train.mask_rate(50, cfg) == pytest.approx(0.30)
    assert train.mask_rate(525, cfg) == pytest.approx(0.225)
    assert train.mask_rate(1000, cfg) == pytest.approx(0.15)
    assert train.learning_rate(0, cfg) == pytest.approx(1e-5)
    assert train.learning_rate(99, cfg) == pytest.approx(1e-3)
    assert train.learning_rate(100, cfg) == pytest.approx(1e-3)  # the cosine starts at its first peak
    assert train.learning_rate(1000, cfg) == pytest.approx(1e-5)  # and ends in its last valley
    # N = 2: one inner peak at p = 2/3, damped towards gamma * lr_max
    p = 2 / 3
    inner = train.learning_rate(100 + round(p * 900), cfg)
    assert inner == pytest.approx(1e-3 * (1 - 0.5 * p), rel=1e-6)
    const = train.TrainConfig(mask_min=0.2, mask_max=0.2)
    assert {train.mask_rate(s, const) for s in range(0, const.max_steps, 37)} == {0.2}


def test_schedules_are_fractions_so_a_short_run_is_the_recipe_in_miniature():
    for steps, warm, switch in [(850, 30, 638), (60, 2, 45), (8500, 298, 6375)]:
        cfg = train.TrainConfig(max_steps=steps)
        lrs = [train.learning_rate(s, cfg) for s in range(steps)]
        assert max(range(steps), key=lambda s: lrs[s]) == warm - 1, "the warm-up ends at lr_max"
        assert [st.first for st in train.stages(cfg)] == [0, switch]
        rates = [train.mask_rate(s, cfg) for s in range(steps)]
        assert max(range(steps), key=lambda s: rates[s]) == round(0.05 * steps)


def test_config_tiny_is_the_default_run():
    default, _ = train.parse_args([])
    tiny, set_there = train.parse_args([os.path.join(ROOT, "config", "tiny.py")])
    assert tiny == default and {"stages", "max_steps", "lr_max"} <= set_there


def test_stages_are_data():
    cfg = train.TrainConfig(max_steps=100, stages=[dict(start=0.0, seq_len=1024, batch_size=16, rope_theta=1e4),
                                                   (0.5, 2048, 8, 4e4), (0.9, 8192, 2, 1.6e5)])
    assert train.stage_at(49, cfg) == (0, train.Stage(0.0, 1024, 16, 1e4))
    assert train.stage_at(50, cfg) == (1, train.Stage(0.5, 2048, 8, 4e4))
    assert train.stage_at(89, cfg)[0] == 1 and train.stage_at(90, cfg) == (2, train.Stage(0.9, 8192, 2, 1.6e5))
    assert train.step_tokens(100, cfg) == 50 * 16 * 1024 + 40 * 8 * 2048 + 10 * 2 * 8192  # on any number of processes
    assert train.step_tokens(60, cfg) == 50 * 16 * 1024 + 10 * 8 * 2048
    for bad in [[], [(0.1, 128, 1, 1e4)], [(0, 128, 1, 1e4), (0, 256, 1, 1e4)], [(0, 128, 1, 1e4), (1.0, 256, 1, 1e4)]]:
        with pytest.raises(ValueError):
            train.stages(train.TrainConfig(stages=bad))


def test_validation_scores_only_masked_positions_with_baselines_on_the_same_positions(data):
    meta, d = data
    from cmbert import CMBert, config_from_preset
    from support.stats import summarize
    torch.manual_seed(0)
    model = CMBert(config_from_preset("tiny", n_layer=1, n_embd=32, n_head=2, intermediate_size=32, vocab_size=1024))
    batches = list(train.val_batches(d, meta, 128, 6, 2))
    assert len(batches) == 3
    for inputs, labels, _, docs in batches:
        scored = labels != -100
        assert scored.any() and (inputs[scored] == meta["mask_id"]).all(), "no scored position shows its token"
        # every position knows its validation document: a [CLS] begins a new one
        starts = d["val"][0].doc_starts
        assert docs.shape == labels.shape and (np.diff(docs, axis=1) >= 0).all()
        assert (docs < len(starts)).all() and ((inputs == meta["cls_id"]).numpy() <= (np.diff(docs, axis=1, prepend=-1) > 0)).all()
    logp = torch.log_softmax(torch.randn(1024, dtype=torch.float64), 0)
    r = summarize(train.evaluate(model, batches, (logp, 7), "cpu", torch.autocast("cpu", enabled=False), 1e4)["all"])
    targets = torch.cat([labels[labels != -100] for _, labels, _, _ in batches])
    assert r["n"] == len(targets) and r["docs"] == len({int(x) for _, l, _, dd in batches for x in dd[(l != -100).numpy()]})
    assert r["unigram_ce"] == pytest.approx(-logp[targets].mean().item())
    assert r["top_acc"] == pytest.approx((targets == 7).double().mean().item())
    with torch.no_grad():
        logits = torch.cat([model(i, labels=l, cu_seqlens=c)[0] for i, l, c, _ in batches])
    assert r["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-5)
    assert r["acc"] == pytest.approx((logits.argmax(-1) == targets).double().mean().item())
    assert r["gain"] == pytest.approx(r["unigram_ce"] - r["loss"]) and r["margin"] == pytest.approx(r["acc"] - r["top_acc"])
    assert r["loss_se"] > 0 and all(0 <= r[f"{k}_se"] < 5 for k in ("loss", "acc", "gain", "margin"))
    split = train.evaluate(model, batches, (logp, 7), "cpu", torch.autocast("cpu", enabled=False), 1e4, split_at=40)
    near, far = summarize(split["near"]), summarize(split["far"])
    assert near["n"] + far["n"] == r["n"]
    n_near = sum(int((l[:, :40] != -100).sum()) for _, l, _, _ in batches)
    assert near["n"] == n_near


def test_bad_settings_and_data_dir(tmp_path, tiny_data):
    for args, message in [(["--nope=1"], "unknown setting 'nope'"), (["--max_steps=ten"], "max_steps must be int"),
                          (["--compile=yes"], "compile must be bool"), (["max_steps=3"], "neither a config file"),
                          ([f"--data_dir={tmp_path}"], "no meta.json"),
                          ([f"--data_dir={tmp_path / 'mien'}"], f"--data_dir={tmp_path / 'mien'}: no such directory")]:
        r = run_train(*args, f"--out_dir={tmp_path / 'out'}")
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    # a mistyped --data_dir is named first, also where --out_dir holds a finished run
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ckpt.pt").write_bytes(b"")
    r = run_train(f"--data_dir={tmp_path / 'mien'}", f"--out_dir={tmp_path / 'out'}")
    assert r.returncode != 0 and f"--data_dir={tmp_path / 'mien'}: no such directory" in r.stderr, r.stderr
    r = run_train("--help")
    assert r.returncode == 0 and "mask_warmup" in r.stdout


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_stages_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, long_data, dtype):
    args = SMALL + [f"--data_dir={long_data}", "--max_steps=10", THREE, "--ckpt_interval=3", "--eval_interval=4",
                    f"--dtype={dtype}"]
    a, b = tmp_path / "a", tmp_path / "b"
    r = run_train(*args, f"--out_dir={a}")
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args, f"--out_dir={b}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # same threads, same float sums
    deadline = time.time() + 120
    while not (b / "ckpt.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (b / "ckpt.pt").exists()
    killed_at = torch.load(b / "ckpt.pt", weights_only=False)["step"]
    assert killed_at < 10
    r = run_train(*args, f"--out_dir={b}", "--resume=True")
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "tok_s"} for r in rows]
    assert strip(read_log(a)) == strip(read_log(b))
    rows = read_log(b)
    assert [r["seq_len"] for r in rows if "loss" in r] == [64] * 4 + [128] * 3 + [256] * 3
    # near/far rows of long validation documents at the last stage's length: at each switch and at the end
    long_rows = [r for r in rows if "far_loss" in r]
    assert [r["step"] for r in long_rows] == [4, 7, 10] and all(r["long_seq_len"] == 256 for r in long_rows)
    assert all(r["near_n"] > 0 and r["far_n"] > 0 and r["far_unigram_ce"] > 0 for r in long_rows)
    assert [r["step"] for r in rows if "val_loss" in r] == [4, 8, 10]
    from cmbert import CMBert
    saved = CMBert.from_pretrained(b)
    assert saved.cfg.vocab_size == 1024 and saved.cfg.rope_theta_global == 8e4, "the model of the last stage"
    assert (b / "tokenizer.json").exists()
    assert (b / "train.png").stat().st_size > 10000


@pytest.mark.parametrize("dtype", DTYPES)
def test_torchrun_two_processes_match_one(tmp_path, tiny_data, dtype):
    common = SMALL + [f"--data_dir={tiny_data}", "--max_steps=3", "--eval_interval=100", "--ckpt_interval=100",
                      f"--dtype={dtype}"]
    r1 = run_train(*common, one_stage(128, 4), f"--out_dir={tmp_path / 'one'}")
    assert r1.returncode == 0, r1.stderr
    r2 = run_train(*common, one_stage(128, 4), f"--out_dir={tmp_path / 'two'}", torchrun=2)  # the same global batch
    assert r2.returncode == 0, r2.stderr
    assert "2 process(es)" in r2.stdout and "4 x 128 tokens (2 per process)" in r2.stdout
    assert [r["tokens"] for r in read_log(tmp_path / "one") if "loss" in r] == \
        [r["tokens"] for r in read_log(tmp_path / "two") if "loss" in r]
    one = [r["loss"] for r in read_log(tmp_path / "one") if "loss" in r]
    two = [r["loss"] for r in read_log(tmp_path / "two") if "loss" in r]
    assert len(one) == len(two) == 3
    # the same global batch and the same loss (the mean over every masked token of it): only the
    # order of the float sums differs (and in bf16, products of other shapes round differently)
    tol = 1e-5 if dtype == "float32" else 2e-3
    assert np.allclose(one, two, rtol=tol), (one, two)
    r3 = run_train(*common, one_stage(128, 3), f"--out_dir={tmp_path / 'three'}", torchrun=2)
    assert r3.returncode != 0 and "stage 1's batch_size 3 cannot be shared by 2 processes: a stage's batch is the " \
        "global batch, and each process takes an equal share" in r3.stderr, r3.stderr
    # two micro-steps of 2 windows are the same step as one of 4 (the same rows, the same mean)
    r4 = run_train(*common, one_stage(128, 2), "--grad_accum=2", f"--out_dir={tmp_path / 'accum'}")
    assert r4.returncode == 0, r4.stderr
    assert np.allclose(one, [r["loss"] for r in read_log(tmp_path / "accum") if "loss" in r], rtol=tol)


def test_non_finite_loss_stops_with_the_last_checkpoint_intact(tmp_path, tiny_data):
    out = tmp_path / "out"
    args = SMALL + [f"--data_dir={tiny_data}", "--max_steps=40", one_stage(), "--ckpt_interval=2",
                    "--eval_interval=100", "--max_bad_steps=2", f"--out_dir={out}"]
    r = run_train(*args, "--lr_max=1e30", "--grad_clip=0", "--lr_warmup=0.03", "--weight_decay=0.0")
    assert r.returncode != 0 and "non-finite steps in a row" in r.stderr, r.stderr[-500:]
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    rows = [x for x in read_log(out) if "loss" in x]
    assert rows[-1]["skipped"] and ckpt["step"] <= rows[-1]["step"]
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values()), "the checkpoint holds good weights"


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_run_prints_no_warning_and_records_its_code(tmp_path, tiny_data, dtype):
    """Nothing on stderr (the RMSNorm autocast warning, in bf16, was the last one); the log's first
    row and the checkpoint say which code ran."""
    out = tmp_path / "out"
    r = run_train(*SMALL, f"--data_dir={tiny_data}", "--max_steps=2", one_stage(64, 2), f"--dtype={dtype}",
                  f"--out_dir={out}", "--demo=True")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert f"on cpu, {dtype}" in r.stdout and "fill-mask demo" in r.stdout
    code = read_log(out)[0]["code"]
    assert len(code["source_sha256"]) == 64 and set(code) == {"commit", "dirty", "source_sha256"}
    assert torch.load(out / "ckpt.pt", weights_only=True)["code"] == code


# ------------------------------------------------------------------------------------------
# One switch per idea of the paper, for ablations

def test_token_level_masking_masks_single_tokens_at_the_requested_rate(data):
    """Words of three tokens each: whole-word masking takes or leaves a word whole; token-level
    masking (--whole_word=False) takes single tokens, at the same rate."""
    meta = dict(mask_id=4, cls_id=2, tokenizer_size=1024)
    ids, flags = 5 + np.arange(8192) % 1000, (np.arange(8192) % 3 == 0).astype(np.uint8)
    starts = [0, 1024, 2048, 3072]
    unit = np.stack([np.cumsum(train.window(ids, flags, s, 1024)[1]) for s in starts])
    for whole_word in (True, False):
        _, labels, _ = train.make_batch((ids, flags), starts, [0.3] * 4, [np.random.default_rng(i) for i in range(4)],
                                        meta, 1024, whole_word=whole_word)
        masked = labels.numpy() != -100
        assert abs(masked.mean() - 0.3) < 0.01, "the requested rate"
        split_units = sum(len(set(masked[r][unit[r] == u])) > 1 for r in range(4) for u in np.unique(unit[r]))
        if whole_word:
            assert split_units == 0, "whole words are masked whole"
        else:
            assert split_units > 200, "token-level masking ignores the word units"
    # validation is the same whatever the training masks: whole words at a fixed rate
    meta, d = data
    assert torch.equal(next(train.val_batches(d, meta, 128, 2, 2))[1], next(train.val_batches(d, meta, 128, 2, 2))[1])


def test_cosine_schedule_equals_its_formula():
    import math
    cfg = train.TrainConfig(max_steps=1000, lr_warmup=0.1, lr_max=1e-3, lr_min=1e-5, lr_schedule="cosine")
    for step in [100, 250, 550, 999, 1000]:
        p = (step - 100) / 900
        assert train.learning_rate(step, cfg) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * p)) / 2)
    assert train.learning_rate(50, cfg) == pytest.approx(1e-3 * 51 / 100)  # the same warm-up
    damped = train.TrainConfig(max_steps=1000, lr_warmup=0.1, lr_max=1e-3, lr_min=1e-5)
    assert train.learning_rate(700, damped) != pytest.approx(train.learning_rate(700, cfg))


def test_one_stage_never_switches(tmp_path, long_data):
    out = tmp_path / "one"
    r = run_train(*SMALL, f"--data_dir={long_data}", "--max_steps=4", one_stage(64, 2), "--eval_interval=2",
                  "--ckpt_interval=4", "--dtype=float32", "--eval_long_len=128", f"--out_dir={out}")
    assert r.returncode == 0, r.stderr
    rows = read_log(out)
    assert {(x["stage"], x["seq_len"]) for x in rows if "loss" in x} == {(1, 64)} and "stage 2" not in r.stdout
    plan = train.stages(train.TrainConfig(stages=[(0, 64, 2, 1e4)], max_steps=4))
    assert [train.stage_at(s, plan)[0] for s in range(5)] == [0] * 5
    # with --eval_long_len the long documents are still scored (in 128-token windows), at the end only
    assert [(x["step"], x["long_seq_len"]) for x in rows if "near_loss" in x] == [(4, 128)]


def test_embedding_trains_at_its_own_learning_rate():
    from cmbert import CMBert, config_from_preset
    model = CMBert(config_from_preset("tiny", n_layer=1, n_embd=32, n_head=2, intermediate_size=32, vocab_size=1024))
    opt = model.configure_optimizers(0.01, 1e-3, (0.9, 0.98), embedding_lr_scale=4.0)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    emb = model.model.embeddings.tok_embeddings.weight
    assert scale[id(emb)] == 4.0 and model.decoder.weight is emb
    assert {v for k, v in scale.items() if k != id(emb)} == {1.0}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_long_window_penalty_scores_identical_positions(long_data):
    from cmbert import CMBert, config_from_preset
    meta, d = train.load_data(str(long_data))
    torch.manual_seed(0)
    model = CMBert(config_from_preset("tiny", n_layer=4, n_embd=32, n_head=2, intermediate_size=32, vocab_size=1024,
                                      local_window=16))
    logp = torch.log_softmax(torch.randn(1024, dtype=torch.float64), 0)
    off = torch.autocast("cpu", enabled=False)
    plan = train.stages(train.TrainConfig(stages=[(0, 64, 2, 1e4), (0.5, 512, 1, 8e4)]))
    r = train.long_documents(model, d, meta, plan, 512, 64, (logp, 7), "cpu", off, 8e4)
    assert set(r) == {"near", "far", "short", "penalty", "penalty_se", "far_near", "far_near_se"} and r["near"]["n"] > 0
    # the same positions: the same count, the same targets (so the same no-context baselines)
    assert r["short"]["n"] == r["near"]["n"] and r["short"]["docs"] == r["near"]["docs"] == r["far"]["docs"] > 1
    assert r["short"]["unigram_ce"] == r["near"]["unigram_ce"] and r["short"]["top_acc"] == r["near"]["top_acc"]
    assert r["short"]["loss"] != r["near"]["loss"], "the longer window changes what the global layers see"
    assert r["penalty"] == pytest.approx(r["near"]["loss"] - r["short"]["loss"])
    assert r["far_near"] == pytest.approx(r["far"]["gain"] - r["near"]["gain"])
    assert 0 < r["penalty_se"] < r["near"]["loss_se"], "pairing the same positions cancels what they share"
    assert 0 < r["far_near_se"] < 1
    # the long documents are a fixed sample of n_docs: fewer documents, fewer windows, the same ones each time
    few = [dd[0, 0] for *_, dd in train.long_val_batches(d, meta, 512, 128, 3)]
    assert len(few) == 3 and few == [dd[0, 0] for *_, dd in train.long_val_batches(d, meta, 512, 128, 3)]
    assert train.long_documents(model, d, meta, plan, 512, 3, (logp, 7), "cpu", off, 8e4)["near"]["docs"] == 3
    # with long windows no longer than the first stage's, there is nothing to measure
    same = train.stages(train.TrainConfig(stages=[(0, 64, 2, 1e4), (0.5, 64, 1, 8e4)]))
    assert train.long_documents(model, d, meta, same, 64, 64, (logp, 7), "cpu", off, 8e4) == {}


def test_compare_plot_of_runs_seeds_as_bands_each_labelled_by_its_own_steps(tmp_path, long_data):
    import warnings
    import plot
    from support.plots import compare, labels
    common = [*SMALL, f"--data_dir={long_data}", "--stages=[(0, 64, 2, 1e4), (0.5, 256, 1, 8e4)]",
              "--ckpt_interval=100", "--dtype=float32"]
    runs = {"wwm1": ["--whole_word=True", "--seed=1"], "wwm2": ["--whole_word=True", "--seed=2"],
            "tokens": ["--whole_word=False", "--seed=1"]}
    for name, flags in runs.items():
        r = run_train(*common, *flags, "--max_steps=4", "--eval_interval=2", f"--out_dir={tmp_path / name}")
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "wwm1" / "train.png").stat().st_size > 10000
    r = run_train(*common, "--whole_word=False", "--seed=1", "--max_steps=2", "--eval_interval=100",
                  f"--out_dir={tmp_path / 'short'}")  # shorter than eval_interval: one validation point
    assert r.returncode == 0, r.stderr
    dirs = [tmp_path / n for n in ("wwm1", "wwm2", "tokens", "short")]
    configs = [read_log(out)[0]["config"] for out in dirs]
    assert labels(configs) == ["max_steps=4, whole_word=True"] * 2 + ["max_steps=4, whole_word=False",
                                                                      "max_steps=2, whole_word=False"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no artists", no empty-slice warnings
        drawn = compare([str(d) for d in dirs], str(tmp_path / "cmp.png"))
    assert drawn == {"max_steps=4, whole_word=True": [("switch 1", 2), ("end", 4)],
                     "max_steps=4, whole_word=False": [("switch 1", 2), ("end", 4)],
                     "max_steps=2, whole_word=False": [("switch 1", 1), ("end", 2)]}, "each bar from its own run"
    assert (tmp_path / "cmp.png").stat().st_size > 10000
    plot.main([str(dirs[0]), str(dirs[2]), "--out", str(tmp_path / "two.png")])
    with pytest.raises(SystemExit, match="no settings row|not a readable log"):
        plot.main([str(tmp_path), "--out", str(tmp_path / "x.png")])
