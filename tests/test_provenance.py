"""The reproducibility record: the code's commit only where the package is a clone's own, and
the one line a study prints of the machine. (A real run's record: tests/test_training.py.)"""

import os
import sys

import jax

from act_jax import provenance

from helpers import REPO


def test_the_commit_is_the_clones_own_or_none():
  if os.path.isdir(os.path.join(REPO, ".git")):
    commit, dirty = provenance.git_state(os.path.join(REPO, "act_jax"))
    assert len(commit) == 40 and isinstance(dirty, bool)
  # A package directory inside some other repository (as in a virtualenv kept in a project):
  # that repository's commit says nothing about this code.
  assert provenance.git_state(os.path.join(REPO, "docs", "analysis")) == (None, None)


def test_an_installed_copy_outside_a_clone_has_no_commit(tmp_path):
  installed = tmp_path / "site-packages" / "act_jax"
  installed.mkdir(parents=True)
  assert provenance.git_state(str(installed)) == (None, None)


def test_the_record_names_this_process(monkeypatch):
  monkeypatch.setattr(sys, "argv", [sys.argv[0], "--workdir=a b"])
  record = provenance.record()
  assert record["command"].endswith(" '--workdir=a b'")
  assert record["device_count"] == jax.device_count()
  assert record["python"] == ".".join(map(str, sys.version_info[:3]))
  assert set(record["packages"]) == set(provenance.PACKAGES)
  assert provenance.record("python -m act_jax.study")["command"] == "python -m act_jax.study"


def test_the_machine_line_keeps_the_studys_format():
  record = {"cpu_model": "AMD EPYC 7B13", "device_kind": "cpu", "cpu_cores": 2,
            "device_count": 2}
  assert provenance.machine_summary(record) == "AMD EPYC 7B13; 2 cores; 2 JAX device(s)"
  gpu = dict(record, cpu_model=None, device_kind="NVIDIA H100 80GB HBM3", device_count=8)
  assert provenance.machine_summary(gpu) == "NVIDIA H100 80GB HBM3; 2 cores; 8 JAX device(s)"
