"""Evaluation: one evaluator for the training loop and for `python -m act_jax.evaluate`.

- `evaluator`: accuracy under a list of attacks, per example, data-parallel over the mesh;
- `sanity`: the checks that catch a broken evaluation (gradient masking and the like);
- `report`: tables and the accuracy-vs-eps plot;
- `cli`: the command line.
"""
