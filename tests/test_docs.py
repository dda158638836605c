"""The docs say what the code is: every module, config field and results.json key is listed, every
page is reachable from the README, the README stays an entry point, and every Python snippet runs.

Snippets, every ```python block of README.md and docs/*.md, run as written, each in a process of
its own. Its working directory holds what the docs' commands leave a reader with, under the same
names: `workdirs/fashion_mnist`, a finished ACT run (the Quickstart's workdir; here configs/tiny.py
on a small fake Fashion-MNIST, seconds instead of minutes), and `exports/fmnist_robust`, its
robust model exported (docs/export.md's command). So a snippet names those paths, with no
placeholder to substitute, and a reader can paste it. A snippet that cannot run in a test is
preceded in the markdown by `<!-- not run: <why> -->`; keep that rare. One that imports a package
act-jax does not install (AutoAttack; torch without the [torch] extra) is skipped where that
package is missing, and one that reads Debian's Fashion-MNIST files where they are missing.
"""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from helpers import (
  HAS_REAL_FASHION_MNIST,
  NEEDS_REAL_FASHION_MNIST,
  REAL_FASHION_MNIST_DIR,
  REPO,
  make_tiny_config,
)

ROOT = pathlib.Path(REPO)
DOCS = ROOT / "docs"
README_MAX_BYTES = 15_500
SNIPPET_PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
# A ```python block, with the `<!-- not run: why -->` line that may precede it.
SNIPPET = re.compile(r"(?:^<!--\s*not run:\s*(?P<why>.*?)\s*-->\n)?^```python\n(?P<code>.*?)^```",
                     re.MULTILINE | re.DOTALL)
FIRST_PARTY = {"act_jax", "configs", "benchmarks"}


def flat_fields(tree: dict, prefix: str = "") -> list[str]:
  fields = []
  for key, value in tree.items():
    fields += (flat_fields(value, f"{prefix}{key}.") if isinstance(value, dict)
               else [f"{prefix}{key}"])
  return fields


def linked_pages(markdown: pathlib.Path) -> set[pathlib.Path]:
  """The local .md files a page links to."""
  links = re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", markdown.read_text())
  return {(markdown.parent / link).resolve() for link in links if "://" not in link}


def test_the_readme_is_an_entry_point():
  assert (ROOT / "README.md").stat().st_size <= README_MAX_BYTES


def test_every_docs_page_is_reachable_from_the_readme():
  reachable, frontier = set(), {(ROOT / "README.md").resolve()}
  while frontier:
    page = frontier.pop()
    reachable.add(page)
    for linked in linked_pages(page):
      assert linked.exists(), f"{page.name} links to a missing page {linked}"
      if linked not in reachable:
        frontier.add(linked)
  pages = {path.resolve() for path in DOCS.rglob("*.md")}
  assert pages - reachable == set()


def test_the_architecture_page_lists_every_module_and_no_other():
  text = (DOCS / "architecture.md").read_text()
  listed = set(re.findall(r"^\s+([a-z_/]+(?:\.py|/))\s", text, re.MULTILINE))
  package = ROOT / "act_jax"
  modules = {str(path.relative_to(package)) for path in package.rglob("*.py")}
  # A listed folder ("models/", "attacks/") stands for the modules in it.
  folders = {entry for entry in listed if entry.endswith("/")}
  covered = {m for m in modules if m in listed or any(m.startswith(f) for f in folders)}
  missing = modules - covered - {"evaluate/__init__.py", "study/__init__.py",
                                 "data/__init__.py", "pytorch/__init__.py"}
  assert not missing, f"modules missing from docs/architecture.md: {sorted(missing)}"
  for entry in listed - {"configs/", "benchmarks/", "launch/", "docs/", "tests/"}:
    assert (package / entry).exists(), f"docs/architecture.md lists {entry}, which is gone"


def test_the_configs_page_lists_every_config_field():
  from configs import base
  text = (DOCS / "configs.md").read_text()
  missing = [f for f in flat_fields(json.loads(base.get_config().to_json_best_effort()))
             if f"`{f}`" not in text]
  assert not missing, f"config fields missing from docs/configs.md: {missing}"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_page_names_only_commands_that_exist(page):
  """`python -m X` in the docs names a module that exists."""
  for module in re.findall(r"python3? -m ([a-z_.]+)", (DOCS / page).read_text()):
    if module.split(".")[0] in ("act_jax", "benchmarks"):
      path = ROOT / module.replace(".", "/")
      assert path.with_suffix(".py").exists() or (path / "__main__.py").exists(), module


def python_snippets() -> list[tuple[str, str, str | None]]:
  """(page:line, code, why it is not run or None) for every ```python block of the docs."""
  snippets = []
  for page in SNIPPET_PAGES:
    text = page.read_text()
    for match in SNIPPET.finditer(text):
      line = text.count("\n", 0, match.start("code"))
      snippets.append((f"{page.relative_to(ROOT)}:{line}", match["code"], match["why"]))
  return snippets


SNIPPETS = python_snippets()


def test_every_python_block_is_a_snippet_and_every_skip_says_why():
  """The parser finds each block (an odd fence would hide one from the test below), and a
  `not run` marker gives its reason."""
  assert len(SNIPPETS) == sum(page.read_text().count("```python") for page in SNIPPET_PAGES)
  assert all(why is None or why.strip() for _, _, why in SNIPPETS)


@pytest.fixture(scope="module")
def reader_directory(fake_fashion_mnist_dir, tmp_path_factory) -> pathlib.Path:
  """What a reader has after the Quickstart and the export command, under the docs' names."""
  from act_jax import train
  root = tmp_path_factory.mktemp("reader")
  config = make_tiny_config(fake_fashion_mnist_dir, str(root / "tfds"))
  config.train.max_steps = 4
  config.eval.num_examples = 16
  workdir = root / "workdirs" / "fashion_mnist"
  train.train_and_evaluate(config, str(workdir))
  if all(importlib.util.find_spec(name) for name in ("torch", "safetensors")):
    from act_jax.export import export_run
    export_run(str(workdir), str(root / "exports" / "fmnist_robust"), which="robust")
  return root


@pytest.mark.slow
def test_the_results_json_keys_are_documented(reader_directory):
  """docs/configs.md#resultsjson names every key a finished run writes, and every key of its
  evaluations."""
  text = (DOCS / "configs.md").read_text()
  results = json.loads((reader_directory / "workdirs/fashion_mnist/results.json").read_text())
  keys = {*results, *results["evaluations"][-1]}
  assert sorted(key for key in keys if f"`{key}`" not in text) == []


@pytest.mark.slow
@pytest.mark.parametrize("where, code, why_not_run", SNIPPETS,
                         ids=[where for where, _, _ in SNIPPETS])
def test_every_python_snippet_runs(where, code, why_not_run, request, tmp_path):
  if why_not_run:
    pytest.skip(f"{where} is marked not run: {why_not_run}")
  if REAL_FASHION_MNIST_DIR in code and not HAS_REAL_FASHION_MNIST:
    pytest.skip(NEEDS_REAL_FASHION_MNIST)
  script = tmp_path / "snippet.py"
  script.write_text(code)
  result = subprocess.run([sys.executable, str(script)],
                          cwd=request.getfixturevalue("reader_directory"),
                          capture_output=True, text=True, timeout=1200,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              filter(None, [REPO, os.environ.get("PYTHONPATH")]))))
  # Every package the snippet tried and did not find (one may be tried after another).
  missing = {name.split(".")[0] for name in re.findall(
      r"ModuleNotFoundError: No module named '([\w.]+)'", result.stderr)}
  if (result.returncode and missing and not missing & FIRST_PARTY
      and not any(importlib.util.find_spec(package) for package in missing)):
    pytest.skip(f"{where} needs {' or '.join(sorted(missing))}, which is not installed here")
  assert result.returncode == 0, f"{where} failed:\n{result.stderr[-5000:]}"
