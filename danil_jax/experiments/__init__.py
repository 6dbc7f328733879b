"""Experiments over many runs: comparisons and the paper's tables.

comparison (per-method summaries over seeds, tables, sweep and difference
plots), paired_stats (paired 95% intervals, p, the minimum detectable
effect, seeds needed), mechanism (the map distance and F1 against lam
over the control's band), paper_numbers (the paper's Tables 1-4 as published),
paper_grid (the grid of runs behind them), paper_tables (our tables beside
the paper's). The commands that run them are danil_jax.compare and
danil_jax.paper.

May import: every lower layer (method, models, runtime, evaluation,
trainer), data_prep and configs. Not the command modules.
"""
