# The default run (python train.py) written out: the built-in defaults of train.py's TrainConfig,
# so `python train.py config/tiny.py` is the same run (a test checks it). Copy this file to start
# a config of your own; editing it changes nothing unless you pass it to train.py.
# A scale model of the paper's recipe on a 2-core CPU in under 10 minutes: a 4 x 256 encoder,
# 638 steps of eight 256-token windows at global RoPE theta 10,000, then 212 steps of one
# 2,048-token window at theta 80,000 (the paper's 8x context extension at an eighth of its lengths;
# stage 2 takes a quarter of the steps, so the extension is a stage one can watch: docs/experiments.md).
preset = "tiny"
stages = [dict(start=0.0, seq_len=256, batch_size=8, rope_theta=10000.0),
          dict(start=0.75, seq_len=2048, batch_size=1, rope_theta=80000.0)]
max_steps = 850
mask_min, mask_max, mask_warmup = 0.15, 0.30, 0.05
lr_max, lr_min, lr_warmup = 2e-3, 2e-4, 0.035     # warm-up: 30 of the 850 steps
lr_cycles, lr_damping = 2, 0.5
eval_interval = 170
eval_windows = 1024
ckpt_interval = 100
