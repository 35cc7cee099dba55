# The default run (python train.py) written out: the built-in defaults of train.py's TrainConfig,
# so `python train.py config/tiny.py` is the same run (a test checks it). Copy this file to start
# a config of your own; editing it changes nothing unless you pass it to train.py.
# The whole recipe on a 2-core CPU in under 10 minutes: a 4 x 256 encoder, 440 steps of two
# 1,024-token windows, then 8 steps of one 8,192-token window (the context extension).
preset = "tiny"
stages = [dict(start=0.0, seq_len=1024, batch_size=2, rope_theta=80000.0),
          dict(start=0.982, seq_len=8192, batch_size=1, rope_theta=80000.0)]
max_steps = 448
mask_min, mask_max, mask_warmup = 0.15, 0.30, 0.05
lr_max, lr_min, warmup_steps = 2e-3, 2e-4, 50
lr_cycles, lr_damping = 2, 0.5
eval_interval = 100
eval_windows = 16
ckpt_interval = 100
