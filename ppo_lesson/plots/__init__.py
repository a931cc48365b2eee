"""The lesson's figures, one module per notebook, each figure a function that returns a matplotlib Figure.

- ``style``: ``save_figure`` / ``figures_dir`` (figures/ or $PPO_LESSON_FIGURES) and the shared look
- ``transformer`` (notebook 01), ``pretraining`` (02), ``reward_model`` (03), ``objective`` (04),
  ``ppo_loop`` (05 and the CLI's ``run``), ``experiments`` (06), ``beyond_ppo`` (07)

Nothing is re-exported here: a figure is imported from the module of the notebook that shows it."""
