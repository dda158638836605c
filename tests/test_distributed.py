"""When `--distributed=auto` joins other processes (the joining itself: test_multi_process.py)."""

import pytest

from act_jax import distributed


@pytest.mark.parametrize("environ,expected", [
    ({}, False),
    ({"SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"}, False),  # inside sbatch, outside an srun step
    ({"SLURM_STEP_NUM_TASKS": "1"}, False),
    ({"SLURM_STEP_NUM_TASKS": "4"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
])
def test_auto_detects_multi_process_launches(environ, expected):
  assert distributed.launched_as_several_processes(environ) == expected


def test_off_and_single_process_auto_do_not_initialize():
  assert not distributed.initialize("off", {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
  assert not distributed.initialize("auto", {})


def test_bad_mode_and_bad_variables_are_named():
  with pytest.raises(ValueError, match="allowed: auto, on, off"):
    distributed.initialize("yes", {})
  with pytest.raises(ValueError, match="SLURM_STEP_NUM_TASKS='four'"):
    distributed.launched_as_several_processes({"SLURM_STEP_NUM_TASKS": "four"})
