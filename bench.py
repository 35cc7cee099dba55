"""
Benchmarks, each measured side by side with its reference in one process:

    python bench.py prepare     # prepare.py's pipeline vs plain single-process jieba.lcut
"""
import argparse, os, sys, tempfile, time


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


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["prepare"])
    p.add_argument("--workers", type=int, default=os.cpu_count())
    args = p.parse_args()
    {"prepare": bench_prepare}[args.what](args)
