"""Training curves of a run, drawn from its `metrics.jsonl`.

  python -m danil_jax.plots --workdir=/tmp/danil_demo   # writes curves.png

The trainer redraws `WORKDIR/curves.png` after every evaluation; this draws
it for any run (the panels: danil_jax.evaluation.plots.plot_curves).
"""

from absl import app
from absl import flags
from etils import epath

from danil_jax.evaluation import plots
from danil_jax.runtime import cli
from danil_jax.runtime import run_log

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'The run directory: draws WORKDIR/curves.png from '
    'WORKDIR/metrics.jsonl.')
flags.mark_flag_as_required('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdir = _WORKDIR.value
  metrics_log = run_log.MetricsLog(workdir)
  records = metrics_log.read()
  if not records:
    raise app.UsageError(f'no metrics in {metrics_log.path}')
  path = plots.plot_curves(records, epath.Path(workdir) / plots.CURVES_FILE,
                           title=workdir)
  print(f'wrote {path}')


if __name__ == '__main__':
  cli.run(main)
