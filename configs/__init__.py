"""The shipped recipes, one `get_config()` per module, installed with act-jax (setup.py): a
config file anywhere can start from them (`from configs import fashion_mnist`), and `--config`
finds them by name (`--config=fashion_mnist`)."""
