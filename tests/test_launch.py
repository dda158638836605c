"""The launch scripts: syntax, shellcheck, their --dry-run plans and their one-line errors.

Scripts run with a minimal environment and a PATH holding only the few tools they use (plus,
where a test says so, fakes of gcloud/srun/scontrol), so no test can reach a real cluster.
"""

import contextlib
import json
import os
import pathlib
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
SCRIPTS = sorted(p.name for p in LAUNCH.iterdir() if p.is_file())
BASH = shutil.which("bash")
TOOLS = ("basename", "dirname")  # what the scripts call besides builtins

POD_ENV = {"WORKDIR": "gs://bucket/act/imagenet", "DATA_DIR": "gs://bucket/tensorflow_datasets",
           "REPO_URL": "https://example.com/act-jax.git"}
TUPLE_OVERRIDE = "--config.optim.lr_decay_epochs=(30, 60)"  # spaces and parentheses to quote


@pytest.fixture(scope="module")
def tool_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tools")
  for tool in TOOLS:
    os.symlink(shutil.which(tool), directory / tool)
  return directory


def run_script(name, args, env, *, tool_dir, path=()):
  """Runs launch/`name` from the repo root with only `env`, `path` and the tool dir."""
  full_env = {"PATH": os.pathsep.join([*map(str, path), str(tool_dir)]), "LANG": "C.UTF-8",
              "HOME": str(tool_dir), **env}
  return subprocess.run([BASH, str(LAUNCH / name), *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=30, check=False)


def planned_commands(stdout):
  """The argv of every `will run:` line."""
  prefix = "will run: "
  return [shlex.split(line[len(prefix):]) for line in stdout.splitlines()
          if line.startswith(prefix)]


def remote_argv(gcloud_argv):
  """The words of the command that `gcloud ... ssh --command=...` runs on the workers."""
  (command,) = [a for a in gcloud_argv if a.startswith("--command=")]
  return shlex.split(command[len("--command="):])


def write_tool(directory, name, text):
  path = pathlib.Path(directory) / name
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return path


def test_scripts_found():
  assert {"single_machine.sh", "tpu_pod.sh", "slurm_gpu.sbatch"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_bash_syntax(name):
  result = subprocess.run([BASH, "-n", str(LAUNCH / name)], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_shellcheck(name):
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (CI installs it: apt-get install shellcheck)")
  result = subprocess.run(["shellcheck", str(LAUNCH / name)], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_executable(name):
  assert os.access(LAUNCH / name, os.X_OK)


def test_single_machine_dry_run(tool_dir):
  result = run_script("single_machine.sh", ["--dry-run", "--config.train.epochs=1"],
                      {"CONFIG": "configs/cifar10.py"}, tool_dir=tool_dir)
  assert result.returncode == 0, result.stderr
  (line,) = result.stdout.splitlines()
  assert line == ("will run: python3 -m act_jax.main --config=configs/cifar10.py "
                  "--workdir=workdirs/cifar10 --config.train.epochs=1")


def test_tpu_pod_dry_run_all(tool_dir):
  result = run_script("tpu_pod.sh", ["--dry-run", "all", TUPLE_OVERRIDE],
                      {**POD_ENV, "CREATE": "true", "SPOT": "true"}, tool_dir=tool_dir)
  assert result.returncode == 0, result.stderr
  create, install, train = planned_commands(result.stdout)
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "act-jax"]
  assert {"--zone=us-central2-b", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
          "--spot"} <= set(create)
  for command in (install, train):
    assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "act-jax"]
    assert "--worker=all" in command
  install_line = " ".join(remote_argv(install))
  assert "git clone --depth=1 --branch main https://example.com/act-jax.git act-jax" in install_line
  assert "pip install -U jax[tpu]" in install_line
  assert "pip install -e act-jax[tfds]" in install_line  # ImageNet reads TFDS
  assert remote_argv(train) == [
      "cd", "act-jax", "&&", "python3", "-m", "act_jax.main", "--config=configs/imagenet.py",
      "--workdir=gs://bucket/act/imagenet", "--distributed=on",
      "--config.dataset.data_dir=gs://bucket/tensorflow_datasets", TUPLE_OVERRIDE]


def test_tpu_pod_phases(tool_dir):
  def plan(*args, **env):
    result = run_script("tpu_pod.sh", ["--dry-run", *args], {**POD_ENV, **env},
                        tool_dir=tool_dir)
    assert result.returncode == 0, result.stderr
    return [command[4] for command in planned_commands(result.stdout)]

  assert plan() == ["ssh", "ssh"]  # `all` without CREATE=true: install, train
  assert plan("all", CREATE="true") == ["create", "ssh", "ssh"]
  assert plan("create") == ["create"]
  assert plan("install") == ["ssh"]
  assert plan("train", "--config.train.epochs=1") == ["ssh"]
  # Phases that do not train need no training settings.
  assert plan("create", WORKDIR="", DATA_DIR="") == ["create"]


def test_tpu_pod_optional_data_dir_and_project(tool_dir):
  result = run_script("tpu_pod.sh", ["--dry-run", "train"],
                      {**POD_ENV, "CONFIG": "configs/cifar10.py", "DATA_DIR": "",
                       "PROJECT": "my-project"}, tool_dir=tool_dir)
  assert result.returncode == 0, result.stderr
  (train,) = planned_commands(result.stdout)
  assert "--project=my-project" in train
  assert not any("data_dir" in word for word in remote_argv(train))


def test_slurm_dry_run_outside_slurm(tool_dir):
  result = run_script("slurm_gpu.sbatch", ["--dry-run", TUPLE_OVERRIDE],
                      {"DATA_DIR": "/shared/tensorflow_datasets"}, tool_dir=tool_dir)
  assert result.returncode == 0, result.stderr
  (command,) = planned_commands(result.stdout)
  assert command == ["srun", "--kill-on-bad-exit=1", "python3", "-m", "act_jax.main",
                     "--config=configs/imagenet.py", "--workdir=workdirs/imagenet",
                     "--distributed=on", "--config.dataset.data_dir=/shared/tensorflow_datasets",
                     TUPLE_OVERRIDE]
  assert "world size: 16 devices (NODES=2 x GPUS_PER_NODE=8)" in result.stdout


def test_slurm_defaults_match_sbatch_headers():
  headers = dict(line.split()[1].lstrip("-").split("=", 1)
                 for line in (LAUNCH / "slurm_gpu.sbatch").read_text().splitlines()
                 if line.startswith("#SBATCH ") and "=" in line)
  assert headers["nodes"] == "2" and headers["gpus-per-node"] == "8"
  assert headers["ntasks-per-node"] == "1"
  assert headers["signal"].startswith("B:USR1@")
  assert "#SBATCH --requeue" in (LAUNCH / "slurm_gpu.sbatch").read_text()


def test_slurm_dry_run_reads_allocation(tool_dir):
  env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "4", "SLURM_NTASKS": "4",
         "SLURM_GPUS_PER_NODE": "h100:4", "NODES": "99"}
  result = run_script("slurm_gpu.sbatch", ["--dry-run"], env, tool_dir=tool_dir)
  assert result.returncode == 0, result.stderr
  assert "world size: 16 devices (NODES=4 x GPUS_PER_NODE=4)" in result.stdout
  # One process per node owns all its GPUs (jax.distributed would give it only one under Slurm).
  assert "with: JAX_LOCAL_DEVICE_IDS=0,1,2,3" in result.stdout


BAD_SETTINGS = [
    ("single_machine.sh", {"CONFIG": "configs/nope.py"}, [], "CONFIG"),
    ("tpu_pod.sh", {**POD_ENV, "WORKDIR": "/local/path"}, [], "WORKDIR"),
    ("tpu_pod.sh", {**POD_ENV, "CONFIG": "configs/nope.py"}, [], "CONFIG"),
    ("tpu_pod.sh", {**POD_ENV, "CONFIG": "README.md"}, [], "CONFIG"),
    ("tpu_pod.sh", {**POD_ENV, "DATA_DIR": ""}, [], "DATA_DIR"),
    ("tpu_pod.sh", {**POD_ENV, "DATA_DIR": "/local/tfds"}, [], "DATA_DIR"),
    ("tpu_pod.sh", {**POD_ENV, "ACCELERATOR_TYPE": "v4"}, [], "ACCELERATOR_TYPE"),
    ("tpu_pod.sh", {**POD_ENV, "ZONE": "central"}, [], "ZONE"),
    ("tpu_pod.sh", {**POD_ENV, "TPU_NAME": "My_Pod"}, [], "TPU_NAME"),
    ("tpu_pod.sh", {**POD_ENV, "CREATE": "yes"}, [], "CREATE"),
    ("tpu_pod.sh", {**POD_ENV, "SPOT": "1"}, [], "SPOT"),
    ("tpu_pod.sh", {**POD_ENV, "REPO_URL": "/work/act-jax"}, [], "REPO_URL"),
    ("tpu_pod.sh", POD_ENV, ["deploy"], "phase"),
    ("tpu_pod.sh", POD_ENV, ["train", "--workdir=/tmp"], "--config.* override"),
    ("tpu_pod.sh", POD_ENV, ["create", "--config.train.epochs=1"], "--config.* overrides"),
    ("slurm_gpu.sbatch", {"CONFIG": "configs/nope.py"}, [], "CONFIG"),
    ("slurm_gpu.sbatch", {"WORKDIR": ""}, [], "WORKDIR"),
    ("slurm_gpu.sbatch", {"NODES": "two"}, [], "NODES"),
    ("slurm_gpu.sbatch", {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "16"},
     [], "SLURM_NTASKS"),
    ("slurm_gpu.sbatch", {}, ["train"], "--config.* override"),
]


@pytest.mark.parametrize("name,env,args,named", BAD_SETTINGS)
def test_bad_setting_is_named(name, env, args, named, tool_dir):
  result = run_script(name, ["--dry-run", *args], env, tool_dir=tool_dir)
  assert result.returncode == 2, result.stdout + result.stderr
  assert result.stdout == ""
  (line,) = result.stderr.splitlines()
  assert line.startswith("error: ") and named in line


def test_tpu_pod_needs_gcloud(tool_dir):
  result = run_script("tpu_pod.sh", ["train"], POD_ENV, tool_dir=tool_dir)
  assert result.returncode == 2
  assert result.stderr.strip() == (
      "error: gcloud is not on PATH; install the Google Cloud SDK (or use --dry-run)")


def test_slurm_needs_a_job(tool_dir):
  result = run_script("slurm_gpu.sbatch", [], {}, tool_dir=tool_dir)
  assert result.returncode == 2
  assert "SLURM_JOB_ID" in result.stderr and "sbatch" in result.stderr


FAKE_TOOL = """#!{python}
# Records its argv; as gcloud ... ssh, runs --command on a fake worker like the real one would.
import json, os, pathlib, subprocess, sys
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ["CALLS_LOG"], "a") as log:
  log.write(json.dumps([tool, *args]) + "\\n")
if tool == "git" and args[0] == "clone":
  (pathlib.Path.cwd() / args[-1] / ".git").mkdir(parents=True)
if tool == "gcloud" and args[3] == "ssh":
  command = [a for a in args if a.startswith("--command=")][0][len("--command="):]
  sys.exit(subprocess.run([os.environ["FAKE_BASH"], "-c", command],
                          cwd=os.environ["WORKER_HOME"]).returncode)
"""


def test_tpu_pod_runs_on_fake_workers(tool_dir, tmp_path):
  """End to end with a fake gcloud: the remote commands survive both shells word for word."""
  fakes = tmp_path / "fakes"
  fakes.mkdir()
  fake = write_tool(fakes, "fake_tool", FAKE_TOOL.format(python=sys.executable))
  for tool in ("gcloud", "git", "python3"):
    os.symlink(fake, fakes / tool)
  (tmp_path / "worker").mkdir()
  log = tmp_path / "calls.jsonl"
  env = {**POD_ENV, "CREATE": "true", "BRANCH": "v1.0", "CALLS_LOG": str(log),
         "FAKE_BASH": BASH, "WORKER_HOME": str(tmp_path / "worker")}
  result = run_script("tpu_pod.sh", ["all", TUPLE_OVERRIDE, "--config.model.name=it's"], env,
                      path=[fakes], tool_dir=tool_dir)
  assert result.returncode == 0, result.stderr
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  assert [c[:6] for c in calls if c[0] == "gcloud"] == [
      ["gcloud", "compute", "tpus", "tpu-vm", "create", "act-jax"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "act-jax"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "act-jax"]]
  assert [c for c in calls if c[0] != "gcloud"] == [
      ["git", "clone", "--depth=1", "--branch", "v1.0", "https://example.com/act-jax.git",
       "act-jax"],
      ["python3", "-m", "pip", "install", "-U", "jax[tpu]"],
      ["python3", "-m", "pip", "install", "-e", "act-jax[tfds]"],
      ["python3", "-m", "act_jax.main", "--config=configs/imagenet.py",
       "--workdir=gs://bucket/act/imagenet", "--distributed=on",
       "--config.dataset.data_dir=gs://bucket/tensorflow_datasets", TUPLE_OVERRIDE,
       "--config.model.name=it's"]]

  # Installing again updates the existing checkout instead of cloning.
  log.unlink()
  result = run_script("tpu_pod.sh", ["install"], env, path=[fakes], tool_dir=tool_dir)
  assert result.returncode == 0, result.stderr
  git_calls = [c for c in map(json.loads, log.read_text().splitlines()) if c[0] == "git"]
  assert git_calls == [["git", "-C", "act-jax", "fetch", "--depth=1", "origin", "v1.0"],
                       ["git", "-C", "act-jax", "checkout", "--force", "-B", "v1.0",
                        "FETCH_HEAD"]]


FAKE_SRUN = """#!{bash}
# Stands in for srun: records its argv, then either exits with FAKE_SRUN_EXIT or runs until
# SIGTERM, which it records (as training would checkpoint) before exiting 0.
printf '%s\\n' "$@" > "$LOG_DIR/srun_args"
if [[ -n "${{FAKE_SRUN_EXIT:-}}" ]]; then exit "$FAKE_SRUN_EXIT"; fi
trap ': > "$LOG_DIR/srun_terminated"; exit 0' TERM
: > "$LOG_DIR/srun_started"
while true; do {sleep} 0.02; done
"""
FAKE_SCONTROL = """#!{bash}
printf '%s\\n' "$@" > "$LOG_DIR/scontrol_args"
"""


@pytest.fixture
def fake_slurm(tmp_path):
  fakes = tmp_path / "fakes"
  fakes.mkdir()
  write_tool(fakes, "srun", FAKE_SRUN.format(bash=BASH, sleep=shutil.which("sleep")))
  write_tool(fakes, "scontrol", FAKE_SCONTROL.format(bash=BASH))
  env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS": "1",
         "PYTHON": sys.executable, "LOG_DIR": str(tmp_path)}
  return fakes, env


def test_slurm_job_exit_status(fake_slurm, tool_dir, tmp_path):
  fakes, env = fake_slurm
  result = run_script("slurm_gpu.sbatch", ["--config.train.epochs=1"],
                      {**env, "FAKE_SRUN_EXIT": "3"}, path=[fakes], tool_dir=tool_dir)
  assert result.returncode == 3
  args = (tmp_path / "srun_args").read_text().splitlines()
  assert args[-3:] == ["--workdir=workdirs/imagenet", "--distributed=on",
                       "--config.train.epochs=1"]
  assert not (tmp_path / "scontrol_args").exists()  # finished jobs are not requeued


def run_job_until_signal(fakes, env, tool_dir, signum):
  """Starts the batch script, sends it `signum` once srun runs; returns (returncode, stdout)."""
  full_env = {"PATH": f"{fakes}{os.pathsep}{tool_dir}", "LANG": "C.UTF-8", **env}
  job = subprocess.Popen([BASH, str(LAUNCH / "slurm_gpu.sbatch")], cwd=REPO, env=full_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
  started = pathlib.Path(env["LOG_DIR"]) / "srun_started"
  try:
    deadline = time.monotonic() + 10
    while not started.exists() and job.poll() is None:
      assert time.monotonic() < deadline, "srun never started"
      time.sleep(0.01)
    assert job.poll() is None, job.communicate()
    job.send_signal(signum)
    job.wait(timeout=10)  # not communicate(): an orphaned fake srun would hold the pipes open
  finally:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(job.pid, signal.SIGKILL)  # whatever is left of the script and its fake srun
    stdout, stderr = job.communicate()
  return job.returncode, stdout + stderr


def test_slurm_time_limit_checkpoints_then_requeues(fake_slurm, tool_dir, tmp_path):
  fakes, env = fake_slurm
  # What --signal=B:USR1@120 sends to the batch shell.
  returncode, output = run_job_until_signal(fakes, env, tool_dir, signal.SIGUSR1)
  assert returncode == 0, output
  assert (tmp_path / "srun_terminated").exists()
  assert (tmp_path / "scontrol_args").read_text().split() == ["requeue", "42"]
  assert "requeueing job 42" in output


def test_slurm_cancel_does_not_requeue(fake_slurm, tool_dir, tmp_path):
  fakes, env = fake_slurm
  returncode, output = run_job_until_signal(fakes, env, tool_dir, signal.SIGTERM)  # scancel
  assert returncode == -signal.SIGTERM, output
  assert not (tmp_path / "scontrol_args").exists()
