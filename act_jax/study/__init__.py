"""The trade-off study: natural training, PGD-AT, TRADES and ACT on one recipe, several seeds.

- `runner`: trains and evaluates every (method, seed), resumably;
- `report`: mean ± std tables, CSV, the robust-vs-clean plot, comparison lines;
- `__main__`: `python -m act_jax.study`.
"""
