import os
import sys
import tempfile

# Tests import `configs` and `data_prep` from the checkout root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Most tests compile the same few demo-model steps, in this process, in the
# xdist workers and in the subprocess runs they start: one persistent XLA
# cache for the session (inherited through the environment) compiles each
# once. Set here, in the first conftest pytest loads, before any worker or
# subprocess starts and before JAX is imported.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix='danil_jax_tests_xla_cache_')
