"""The demo for comparing methods: the quick demo trained 15 epochs.

python -m danil_jax.compare --config=configs/demo_compare.py --workdir=WORK \
    --methods=base,ohem,control,danil --seeds=0,1,2,3,4,5,6,7

The quick demo (configs/demo.py, 5 epochs) ends mid-descent: a change of the
gradient at rounding level (the lam = 0 control) moves a seed's test
macro-F1 by 0.03, so no difference of the paper's size (+0.01 to +0.04) is
detectable with a handful of seeds. With the cosine decay run out over 15
epochs the control's paired sd falls from 0.030 to 0.007 and 3 seeds detect
0.03, 7 seeds 0.01 (README, "Does DANIL help?"; measured over 14 seeds).
30 epochs halves the floor again at twice the cost, near the ceiling
(macro-F1 0.975).
"""

from danil_jax.configs import demo


def get_config():
  config = demo.get_config()
  config.num_epochs = 15
  return config
