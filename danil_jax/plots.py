"""Training curves of a run, drawn from its `metrics.jsonl`.

  python -m danil_jax.plots --workdir=/tmp/danil_demo   # writes curves.png

The trainer redraws `WORKDIR/curves.png` after every evaluation; this draws
it for any run (the panels: danil_jax.evaluation.plots.plot_curves).
"""

import argparse

from etils import epath

from danil_jax.evaluation import plots
from danil_jax.runtime import run_log


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m danil_jax.plots',
      description='Draws WORKDIR/curves.png from WORKDIR/metrics.jsonl.')
  parser.add_argument('--workdir', required=True, help='run directory')
  workdir = parser.parse_args(argv).workdir
  records = run_log.MetricsLog(workdir).read()
  if not records:
    parser.error(f'no metrics in {epath.Path(workdir) / "metrics.jsonl"}')
  path = plots.plot_curves(records, epath.Path(workdir) / plots.CURVES_FILE,
                           title=workdir)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
