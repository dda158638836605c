"""ImageNet and CIFAR that are not prepared: one line naming dataset.data_dir and the fix, no
workdir, no download, no build. These run TFDS's real builders (no mock) against an empty data
directory, in the environment that the `[tfds]` extra installs (CI installs nothing else that
TFDS needs), so a package the extra forgets fails here as it would for a user.
"""

import os
import subprocess
import sys
import time

import pytest

from helpers import REPO

pytest.importorskip("tensorflow_datasets", reason="the [tfds] extra is not installed")
pytestmark = pytest.mark.slow

SECONDS_WITHOUT_A_DOWNLOAD = 60  # a download attempt without a network retries for minutes


def run(*arguments: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *arguments], cwd=REPO, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, PYTHONPATH=REPO))


@pytest.mark.parametrize("config", ["imagenet", "cifar10", "cifar100"])
def test_an_unprepared_dataset_fails_in_one_line_before_the_workdir_exists(tmp_path, config):
  data_dir, workdir = tmp_path / "tensorflow_datasets", tmp_path / "run"
  data_dir.mkdir()
  began = time.monotonic()
  result = run("act_jax.main", f"--config=configs/{config}.py", f"--workdir={workdir}",
               f"--config.dataset.data_dir={data_dir}")
  assert result.returncode == 2
  assert time.monotonic() - began < SECONDS_WITHOUT_A_DOWNLOAD
  name = {"imagenet": "imagenet2012"}.get(config, config)
  assert result.stderr.strip().splitlines() == [
      f"error: {name} is not prepared in dataset.data_dir={data_dir}: prepare it once with "
      f"`python -m act_jax.prepare_data --dataset={name} --data_dir={data_dir}` (see "
      "docs/datasets.md), or point --config.dataset.data_dir at a prepared copy"]
  assert not workdir.exists()
  assert sorted(os.listdir(data_dir)) in ([], [name])  # TFDS may create an empty folder


def test_preparing_imagenet_without_its_tarballs_says_where_they_go(tmp_path):
  result = run("act_jax.prepare_data", "--dataset=imagenet2012", f"--data_dir={tmp_path}")
  assert result.returncode == 2
  manual = tmp_path / "downloads" / "manual"
  assert result.stderr.strip().splitlines() == [
      f"error: imagenet2012: ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar not found in "
      f"{manual}: download them from image-net.org (TFDS cannot) and pass --manual_dir (see "
      "docs/datasets.md)"]
