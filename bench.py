"""
Benchmarks, each measured side by side with its reference in one run:

    python bench.py prepare     # prepare.py's pipeline vs plain single-process jieba.lcut
    python bench.py model       # a CMBert training step vs transformers' ModernBertForMaskedLM
"""
import argparse, json, os, subprocess, sys, tempfile, time

import torch


def bench_prepare(args):
    import jieba
    import prepare
    files = prepare.default_corpus()
    docs = list(prepare.normalized_documents(files, ["text"], "utf-8"))
    n_chars = sum(map(len, docs))
    jieba.setLogLevel(60)
    jieba.initialize()  # load the dictionary outside the timed region
    t = time.perf_counter()
    for d in docs:
        jieba.lcut(d)
    t_jieba = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        meta = prepare.main(["--out_dir", out, "--quiet", "--workers", str(args.workers)])
        t_prep = time.perf_counter() - t
    print(f"default corpus: {len(docs):,} documents, {n_chars:,} characters, {os.cpu_count()} cores")
    print(f"{'':34s} {'seconds':>8s} {'M chars/s':>10s}")
    print(f"{'jieba.lcut, one process':34s} {t_jieba:8.2f} {n_chars / t_jieba / 1e6:10.3f}")
    print(f"{'prepare.py (vocab + seg + encode)':34s} {t_prep:8.2f} {n_chars / t_prep / 1e6:10.3f}"
          f"   (vocabulary {meta['seconds_vocab']:.1f}s, segment+encode {meta['seconds_encode']:.1f}s)")
    print(f"pipeline / jieba speed: {t_jieba / t_prep:.2f}x")


# ------------------------------------------------------------------------------------------
# Model: one full training step (forward, backward, AdamW), same shape, batch and labels

def build(which, preset, device, backend="auto"):
    """CMBert (norm='layernorm', so both compute the same function) or transformers' ModernBERT
    with its best CPU settings: SDPA attention and sparse prediction."""
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
                              attn_implementation="sdpa")
        model = ModernBertForMaskedLM(hf)
    model.to(device)
    return model, cfg, torch.optim.AdamW(model.parameters(), lr=1e-4)


def make_step(which, model, opt, B, T, vocab, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (B, T), generator=g).to(device)
    labels = torch.where(torch.rand(B, T, generator=g) < 0.3, torch.randint(5, vocab, (B, T), generator=g), -100).to(device)
    mask = torch.ones_like(ids)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda")

    def step():
        with autocast:
            loss = model(ids, labels=labels)[1] if which == "cmbert" else \
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


def bench_model(args):
    from cmbert import device_peak_flops
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else f'cpu, {torch.get_num_threads()} threads'}, "
          f"torch {torch.__version__}")
    if device == "cpu":
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
        return
    # GPU: bf16 tokens/s and MFU of the base preset with each available backend
    from cmbert import flash_attn_available
    peak_flops = device_peak_flops(device)
    backends = ["torch"] + (["flash"] if flash_attn_available() else [])
    print(f"base preset, bf16 autocast, peak {peak_flops / 1e12 if peak_flops else float('nan'):.0f} TFLOP/s")
    print(f"{'backend':>8s} {'B x T':>10s} {'tok/s':>10s} {'MFU':>6s} {'peak GB':>8s}")
    for backend in backends:
        for B, T in [(16, 1024), (2, 8192)]:
            model, cfg, opt = build("cmbert", "base", device, backend)
            step = make_step("cmbert", model, opt, B, T, cfg.vocab_size, device)
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            torch.cuda.synchronize()
            tok_s = B * T * args.steps / (time.perf_counter() - t)
            mfu = model.estimate_mfu(tok_s, T, peak_flops)
            print(f"{backend:>8s} {f'{B} x {T}':>10s} {tok_s:10,.0f} {mfu or float('nan'):6.1%} "
                  f"{torch.cuda.max_memory_allocated() / 2**30:8.1f}")
            del model, opt, step


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_peak":
        peak_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["prepare", "model"])
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=5, help="timed training steps per model and shape")
    args = p.parse_args()
    {"prepare": bench_prepare, "model": bench_model}[args.what](args)
