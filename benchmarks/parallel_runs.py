"""Trains the runs of `danil_jax.compare` grids as parallel processes.

  python benchmarks/parallel_runs.py --config=configs/demo.py --workdir=WORK \
      --data_dir=DATA --seeds=0-15 --jobs=12 --deadline_s=400 \
      --plan='base,control|num_epochs=5,15,30' \
      --plan='danil|num_epochs=15,30;danil.reduction=batch;danil.lam=1e-5'

`compare` trains one run after another in one process; on a machine with
many cores (or one GPU that small models leave mostly idle) that wastes it.
This starts `python -m danil_jax.main` for each (seed, plan line, sweep
point, method), `--jobs` at a time, into the directory `compare` would use
(`grid_runs.run_dir`), so `compare --only_finished` with the same methods,
seeds and sweep summarises them afterwards. Seeds are the outer loop: if
`--deadline_s` stops the launching early, the finished runs cover every
method of the first seeds rather than some methods of all. Runs still going
at `--deadline_s + --grace_s` are stopped (rerunning resumes them from their
last checkpoint). `control` is the DANIL step with lam = 0 (see compare).
Each run's wall time goes to WORKDIR/parallel_runs.json.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def parse_seeds(text: str) -> list[int]:
  """'0-3,7' -> [0, 1, 2, 3, 7]."""
  seeds = []
  for part in text.split(','):
    low, _, high = part.partition('-')
    seeds += list(range(int(low), int(high or low) + 1))
  return seeds


def jobs(config, workdir: str, seeds, plan: list[str]):
  """[(run directory, main.py overrides)] in launch order, each run once."""
  # pylint: disable=g-import-not-at-top
  from danil_jax.experiments import compare_grid
  from danil_jax.experiments import comparison
  from danil_jax.experiments import grid_runs
  # pylint: enable=g-import-not-at-top
  ordered, seen = [], set()
  for seed in seeds:
    for line in plan:
      methods, _, sweep_text = line.partition('|')
      sweep = compare_grid.parse_sweep([sweep_text], config)
      for point in compare_grid.grid(sweep):
        for method in methods.split(','):
          directory = grid_runs.run_dir(workdir, method, seed, point)
          if directory in seen:
            continue
          seen.add(directory)
          overrides = [f'--config.seed={seed}']
          if method == 'control':
            overrides += ['--config.method=danil', '--config.danil.lam=0.0']
          else:
            overrides.append(f'--config.method={method}')
          overrides += [f'--config.{key}={text}' for key, text, _ in point
                        if comparison.applies(key, method)]
          ordered.append((directory, overrides))
  return ordered


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--seeds', default='0-4')
  parser.add_argument('--plan', action='append', required=True,
                      help="'method,method|key=v1,v2;key=v' (compare's "
                      '--methods and --sweep)')
  parser.add_argument('--jobs', type=int, default=4)
  parser.add_argument('--deadline_s', type=float, default=float('inf'),
                      help='launch no run after this many seconds')
  parser.add_argument('--grace_s', type=float, default=60)
  parser.add_argument('--override', action='append', default=[],
                      help='extra --config.KEY=VALUE for every run')
  args = parser.parse_args()

  spec = importlib.util.spec_from_file_location('config', args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  todo = [(d, o) for d, o in jobs(config, workdir, parse_seeds(args.seeds),
                                  args.plan)
          if not os.path.exists(os.path.join(d, 'final_metrics.json'))]
  print(f'{len(todo)} runs to train, {args.jobs} at a time', flush=True)
  start, running, times = time.monotonic(), {}, {}
  while todo or running:
    now = time.monotonic() - start
    for directory, (process, began) in list(running.items()):
      if process.poll() is not None:
        del running[directory]
        times[os.path.basename(directory)] = dict(
            wall_s=round(now - began, 1), returncode=process.returncode)
        print(f'[{now:6.0f} s] rc {process.returncode} '
              f'{os.path.basename(directory)} ({now - began:.0f} s); '
              f'{len(todo)} waiting', flush=True)
      elif now > args.deadline_s + args.grace_s:
        process.kill()
    if now > args.deadline_s:
      todo = []
    while todo and len(running) < args.jobs:
      directory, overrides = todo.pop(0)
      argv = [sys.executable, '-m', 'danil_jax.main',
              f'--config={args.config}', f'--workdir={directory}',
              f'--config.dataset.data_dir={args.data_dir}',
              *overrides, *args.override]
      log = open(directory + '.log', 'w')
      running[directory] = (subprocess.Popen(
          argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), now)
    time.sleep(0.5)
  with open(os.path.join(workdir, 'parallel_runs.json'), 'w') as f:
    json.dump(times, f, indent=1)


if __name__ == '__main__':
  main()
