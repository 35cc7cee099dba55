# A study for study.py (not a train.py config): the default run and each one-flag ablation of the
# paper's ideas, 3 seeds each, all in fp32 (what a CPU without native bf16 computes), one run after
# another.  python study.py config/study_ablations.py   (about 3 hours on a 2-core CPU)
out_dir = "out_study"
seeds = [1337, 1338, 1339]
common = ["--dtype=float32", "--demo=False", "--progress=False"]
settings = {
    "default": [],
    "token-level masking": ["--whole_word=False"],
    "constant 15%": ["--mask_max=0.15"],
    "constant 30%": ["--mask_min=0.3", "--mask_max=0.3"],
    "plain cosine": ["--lr_schedule=cosine"],
    "one stage": ["--stages=[(0, 256, 8, 1e4)]", "--eval_long_len=2048"],
    "LayerNorm": ["--norm=layernorm"],
}
