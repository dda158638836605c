"""act_jax in plain PyTorch (the optional `[torch]` extra): the models with weight converters
(`models`) and the ACT step (`act_step`), for the throughput race and the parity tests."""
