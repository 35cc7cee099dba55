"""
What the lecture stands on. The four files at the root (prepare.py, cmbert.py, train.py,
eval_clue.py) hold the method; the modules here hold everything a reader does not need in order to
learn it. Imports run one way: the lecture files and the commands (use.py, plot.py, bench.py)
import these modules; a module here imports only its neighbours, never a file above it.

    errors.py        one way to fail: a refusal or a fault is one line naming the file or value
    files.py         atomic writes (temporary name, then rename), sha256
    settings.py      every script's command line and the table of rules its settings must satisfy
    runtime.py       device and dtype, torchrun's processes, compile, which code ran, peak FLOPs
    tokens.py        the special tokens; checks that a tokenizer belongs to a dataset or a model; where
                     each token of an encoded text lies in it
    corpus.py        reading .txt / .jsonl / .json / .csv / .parquet (optionally gzipped) in bounded memory,
                     whole or in slices (the encode step's units of work)
    dataset.py       the prepared dataset on disk (shards, done records, manifest): written by
                     prepare.py, checked and read by train.py
    run_files.py     a training run's directory: checkpoint, model folder, log, what a run prints
    trackers.py      the log also sent to TensorBoard or Weights & Biases (train.py --tracker), optional
    plots.py         train.png and the comparison of several runs, drawn from their logs
    figures.py       how the method's figures are drawn (plot.py draws what they show): a font for
                     Chinese, a colour-blind-safe palette, PNGs that are the same bytes every time
    fill_mask.py     whole-word fill-mask with a trained model (use.py, train.py's closing demo)
    model_files.py   model folders: save_pretrained / from_pretrained, the Hugging Face export
    hf_cmbert.py     transformers' interfaces around cmbert.py's modules. Never imported here:
                     save_hf copies it, with cmbert.py, into RMSNorm exports, where it runs
    clue_data.py     CLUE's files found and read row by row (ChID in FewCLUE's and CLUE's layouts);
                     the official CMRC2018 metric; correlations
    clue_results.py  eval_clue's report: seeds aggregated, zero-shot accuracies beside their baseline,
                     the tables, --save folders
"""
