"""Experiments over many runs: comparisons and the paper's tables.

grid_runs (a grid's runs: their directories, the one rule for reusing a
finished run, typed `key=text` values, reading and training them),
comparison (per-method summaries over seeds, tables, sweep and difference
plots), compare_grid (the compare command's methods x sweep x seeds),
paired_stats (paired 95% intervals, p, the minimum detectable effect, seeds
needed), mechanism (the map distance and F1 against lam over the control's
band), paper_numbers (the paper's Tables 1-4 as published), paper_grid (the
grid of runs behind them), paper_runs (those runs checked, trained and read),
paper_tables (our tables beside the paper's). The commands that run them,
danil_jax.compare and danil_jax.paper, are their flags and a call into
these.

May import: every lower layer (method, models, runtime, evaluation,
trainer), data_prep and configs. Not the command modules.
"""
