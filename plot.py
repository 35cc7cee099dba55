"""
Pictures of training runs, drawn from their log.jsonl.

    python plot.py out_a out_b ... [--out compare.png]   # several runs, labelled by how their settings differ;
                                                         # runs that differ only by --seed are one band

train.py draws each run's own picture (train.png) at every checkpoint (support/plots.py).
"""
from support.errors import script
from support.plots import compare
from support.settings import ArgParser


@script("plot.py")
def main(argv=None):
    p = ArgParser("plot.py", __doc__)
    p.add_argument("runs", nargs="+", help="run directories (each with the log.jsonl train.py writes)")
    p.add_argument("--out", default="compare.png", help="the picture to write")
    args = p.parse_args(argv)
    compare(args.runs, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
