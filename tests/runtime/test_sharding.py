"""Global-batch semantics: one step on 1 device equals one step on 4 devices."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from danil_jax.runtime import multihost

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

ONE_STEP = textwrap.dedent('''
    import sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from danil_jax import models
    from danil_jax.runtime import multihost
    from danil_jax.trainer import train_step
    assert jax.device_count() == int(sys.argv[2]), jax.devices()
    mesh = multihost.make_mesh()
    model = models.create('small_resnet', 3, widths=(4, 8))
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 16, 16, 3))
    labels = jnp.arange(8) % 3
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    state = train_step.create_train_state(model, variables, optax.sgd(0.1),
                                     jax.random.PRNGKey(2))
    state = multihost.replicate(state, mesh)
    batch = multihost.global_batch({'image': np.asarray(x),
                                    'label': np.asarray(labels)}, mesh)
    assert len(batch['image'].sharding.device_set) == jax.device_count()
    step = jax.jit(
        train_step.step_for('danil', lam=1.0, reduction='per_image'),
        in_shardings=(multihost.replicated(mesh),
                      multihost.data_sharding(mesh)))
    new_state, metrics = step(state, batch)
    assert float(metrics['misclassified']) > 0
    leaves = jax.tree_util.tree_leaves_with_path(
        {'params': new_state.params, 'batch_stats': new_state.batch_stats})
    np.savez(sys.argv[1], **{jax.tree_util.keystr(k): np.asarray(v)
                             for k, v in leaves})
''')


def _run_one_step(tmp_path, num_devices):
  out = tmp_path / f'{num_devices}.npz'
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}')
  subprocess.run([sys.executable, '-c', ONE_STEP, str(out), str(num_devices)],
                 env=env, check=True, cwd=REPO)
  return dict(np.load(out))


def test_one_step_is_the_same_on_1_and_4_devices(tmp_path):
  one, four = _run_one_step(tmp_path, 1), _run_one_step(tmp_path, 4)
  assert one.keys() == four.keys() and len(one) > 10
  for name in one:
    np.testing.assert_allclose(four[name], one[name], rtol=1e-5, atol=1e-5,
                               err_msg=name)
  # The step did move the parameters, so equality is not vacuous.
  assert any(np.abs(one[k]).sum() > 0 for k in one)


def test_batch_size_must_divide_over_devices():
  mesh = multihost.make_mesh()
  assert multihost.per_process_batch_size(8, mesh) == 8


@pytest.mark.parametrize('global_batch_size, process_count',
                         [(8, 1), (8, 2), (12, 4), (48, 3)])
def test_the_hosts_slices_tile_the_global_batch(global_batch_size,
                                                process_count):
  rows = [list(range(global_batch_size))[multihost.host_slice(
      global_batch_size, process_index=p, process_count=process_count)]
          for p in range(process_count)]
  assert sum(rows, []) == list(range(global_batch_size))
  assert {len(r) for r in rows} == {global_batch_size // process_count}


def test_a_batch_the_processes_cannot_share_is_named():
  with pytest.raises(ValueError, match='10 is not divisible by the number '
                                       'of processes 4'):
    multihost.host_slice(10, process_index=0, process_count=4)


def test_batch_sizes_that_do_not_split_over_devices_are_named(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  script = textwrap.dedent(f'''
      import pytest
      from danil_jax.configs import demo
      from danil_jax.trainer import train
      config = demo.get_config()
      config.dataset.data_dir = {str(tmp_path / 'data')!r}
      config.input.eval_batch_size = 90
      with pytest.raises(ValueError, match='eval_batch_size.*90.*4'):
        train.train_and_evaluate(config, {str(tmp_path / 'work')!r})
  ''')
  subprocess.run([sys.executable, '-c', script], env=env, check=True,
                 cwd=REPO)
