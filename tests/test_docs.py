"""The docs say what the code is: every module, config field and results.json key is listed, every
page is reachable from the README, and the README stays an entry point."""

import json
import pathlib
import re

import pytest

from helpers import REPO

ROOT = pathlib.Path(REPO)
DOCS = ROOT / "docs"
README_MAX_BYTES = 15_500


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
