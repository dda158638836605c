"""Imports point one way: from the command lines down to the foundations, never back, no cycle.

The layers, lowest first; a module may import modules of its own layer or of lower ones. The
import graph is read from the source (every `import`, at module level or inside a function, of
an `act_jax` module), so a lazy import that closes a cycle counts as one.
"""

import ast
import pathlib

import pytest

from helpers import REPO

PACKAGE = pathlib.Path(REPO) / "act_jax"

# Lowest first. A name matches a module and, ending in ".", every module below that package.
LAYERS = (
    ("foundations", ("act_jax.errors", "act_jax.stderr", "act_jax.parallel", "act_jax.interruption",
                     "act_jax.write_failures",
                     "act_jax.distributed", "act_jax.reporting", "act_jax.command_line",
                     "act_jax.provenance")),
    ("building blocks", ("act_jax.losses", "act_jax.train_state", "act_jax.optimizers",
                         "act_jax.models", "act_jax.models.", "act_jax.attacks",
                         "act_jax.attacks.", "act_jax.data.catalog",
                         "act_jax.data.fashion_mnist", "act_jax.data.own_data",
                         "act_jax.data.augmentations",
                         "act_jax.data.tfds_pipeline", "act_jax.workdir",
                         "act_jax.workdir_lock")),
    ("data", ("act_jax.data", "act_jax.data.tfds_by_name", "act_jax.data.datasets",
              "act_jax.data.in_memory",
              "act_jax.data.pipeline")),
    ("methods", ("act_jax.methods", "act_jax.methods.")),
    ("run parts", ("act_jax.experiment", "act_jax.checkpointing", "act_jax.config_validation",
                   "act_jax.evaluate.evaluator", "act_jax.evaluate.report",
                   "act_jax.evaluate.sanity", "act_jax.analysis.objective",
                   "act_jax.analysis.curvature", "act_jax.analysis.weight_noise",
                   "act_jax.analysis.complexity", "act_jax.analysis.representations")),
    ("runs", ("act_jax.train", "act_jax.api", "act_jax")),
    ("tools", ("act_jax.evaluate", "act_jax.evaluate.cli", "act_jax.study",
               "act_jax.study.runner", "act_jax.study.report", "act_jax.pytorch",
               "act_jax.pytorch.", "act_jax.analysis", "act_jax.analysis.runner",
               "act_jax.analysis.study", "act_jax.analysis.report", "act_jax.export",
               "act_jax.export.cli")),
    ("command lines", ("act_jax.main", "act_jax.prepare_data", "act_jax.evaluate.__main__",
                       "act_jax.study.__main__", "act_jax.analysis.__main__",
                       "act_jax.export.__main__", "act_jax.plot_curves",
                       "act_jax.plot_curves.__main__", "act_jax.choose_on_validation")),
)


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
  for index, (_, names) in enumerate(LAYERS):
    if module in names or any(n.endswith(".") and module.startswith(n) for n in names):
      return index
  raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it")


def imported_modules(module: str) -> set[str]:
  """The act_jax modules that `module` imports anywhere in its source."""
  tree = ast.parse(MODULES[module].read_text())
  package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      submodules = {f"{base}.{alias.name}" for alias in node.names} & set(MODULES)
      found.update(submodules)
      if len(submodules) < len(node.names):  # names defined in the package itself
        found.add(base)
  return {name for name in found if name in MODULES and name != module}


GRAPH = {module: imported_modules(module) for module in MODULES}


def test_every_module_has_a_layer():
  for module in MODULES:
    layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module):
  higher = [(imported, LAYERS[layer_of(imported)][0]) for imported in GRAPH[module]
            if layer_of(imported) > layer_of(module)]
  assert not higher, f"{module} ({LAYERS[layer_of(module)][0]}) imports {higher}"


def test_no_import_cycle():
  visiting, done = [], set()

  def visit(module: str) -> None:
    if module in done:
      return
    assert module not in visiting, "cycle: " + " -> ".join(
        [*visiting[visiting.index(module):], module])
    visiting.append(module)
    for imported in sorted(GRAPH[module]):
      visit(imported)
    visiting.pop()
    done.add(module)

  for module in sorted(MODULES):
    visit(module)
