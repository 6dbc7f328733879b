"""Global batches are a function of (seed, step): the same on 1 host or N."""

from absl import flags
import numpy as np
import pytest

from danil_jax.runtime import input_pipeline

NUM_RECORDS, GLOBAL_BATCH = 22, 4  # 5 steps an epoch, 2 records dropped
PRE = input_pipeline.Preprocessing(size=8, mean=(0.5, 0.5, 0.5),
                                   std=(0.25, 0.25, 0.25), augment=True)


class IndexImages:
  """Record i: a ramp image offset by i, label i (picklable, for workers)."""

  def __len__(self):
    return NUM_RECORDS

  def __getitem__(self, index):
    ramp = np.add.outer(np.arange(12), np.arange(12))[..., None] * 9
    return {'image': (ramp + index * 3 + np.arange(3)).astype(np.uint8),
            'label': index}


def global_batches(process_count, *, steps, start_step=0, num_workers=0,
                   seed=0):
  """Steps [start_step, steps) as the concatenation of every host's slices."""
  loaders = [iter(input_pipeline.train_loader(
      IndexImages(), global_batch_size=GLOBAL_BATCH, pre=PRE, seed=seed,
      start_step=start_step, num_workers=num_workers, process_index=p,
      process_count=process_count)) for p in range(process_count)]
  batches = []
  for _ in range(start_step, steps):
    slices = [next(loader) for loader in loaders]
    batches.append({k: np.concatenate([s[k] for s in slices])
                    for k in ('image', 'label')})
  return batches


def test_every_epoch_is_a_fresh_permutation_without_repeats():
  labels = np.stack([b['label'] for b in global_batches(1, steps=15)])
  epochs = labels.reshape(3, -1)  # 5 steps of 4 records an epoch
  for epoch in epochs:
    assert len(set(epoch)) == 20 and set(epoch) <= set(range(NUM_RECORDS))
  assert not np.array_equal(epochs[0], epochs[1])
  other_seed = np.stack([b['label'] for b in global_batches(1, steps=5,
                                                            seed=1)])
  assert not np.array_equal(other_seed.reshape(-1), epochs[0])


def test_global_batches_are_the_same_for_1_2_and_4_hosts():
  one = global_batches(1, steps=12)  # crosses two epoch boundaries
  for hosts in (2, 4):
    many = global_batches(hosts, steps=12)
    for step, (a, b) in enumerate(zip(one, many)):
      np.testing.assert_array_equal(a['label'], b['label'], err_msg=step)
      # The same augmentation draws, not only the same records.
      np.testing.assert_array_equal(a['image'], b['image'], err_msg=step)
  # Augmentation did act: a record looks different in its next epoch.
  record, image = one[0]['label'][0], one[0]['image'][0]
  again = [b['image'][list(b['label']).index(record)] for b in one[5:10]
           if record in b['label']]
  assert len(again) == 1 and not np.allclose(again[0], image)


def test_starting_at_a_step_continues_the_uninterrupted_stream():
  straight = global_batches(1, steps=9)
  resumed_on_two = global_batches(2, steps=9, start_step=6)
  for a, b in zip(straight[6:], resumed_on_two):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_grain_workers_give_the_same_batches():
  if not flags.FLAGS.is_parsed():  # grain workers read absl flags; app.run
    flags.FLAGS.mark_as_parsed()   # parses them in the commands
  in_process = global_batches(2, steps=6)
  workers = global_batches(2, steps=6, num_workers=2)
  for a, b in zip(in_process, workers):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


@pytest.mark.parametrize('hosts', [1, 2])
def test_evaluation_covers_the_split_once_on_any_number_of_hosts(hosts):
  per_host = [list(input_pipeline.eval_batches(
      IndexImages(), global_batch_size=8, pre=PRE, process_index=p,
      process_count=hosts)) for p in range(hosts)]
  labels = np.concatenate([
      np.concatenate([host[b]['label'][host[b]['mask']] for host in per_host])
      for b in range(len(per_host[0]))])
  np.testing.assert_array_equal(labels, np.arange(NUM_RECORDS))
  assert len(per_host[0]) == 3  # 22 records: 2 full batches and 6 + 2 pads


def test_batches_that_do_not_split_over_hosts_are_named():
  with pytest.raises(ValueError, match='global batch size 4.*processes 3'):
    input_pipeline.train_loader(IndexImages(), global_batch_size=4, pre=PRE,
                                seed=0, process_index=0, process_count=3)
