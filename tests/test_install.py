"""The README's install: main.py on an old Python, and .ci/run against the two commands."""

import ast
import glob
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, 'main.py')
ONE_LINE = re.compile(
    r'Error: googlenet_jax needs Python 3\.11 or newer \(this is (\d+\.\d+\.\d+)\): '
    r'.*uv venv --python 3\.12 .*\n\Z')

# Without the guard, main.py given these stops at once with absl's flag error.
ARGS = ['--config=configs/fmnist96.py', '--mode=none']

# Runs main.py as `python main.py` would, but with sys.version_info set to 3.10.12, and
# says on stdout which of the modules main.py imports after its guard got imported.
FAKE_OLD_PYTHON = f"""
import runpy, sys
sys.argv = ['main.py'] + {ARGS!r}
sys.version_info = (3, 10, 12, 'final', 0)
try:
  runpy.run_path({MAIN!r}, run_name='__main__')
finally:
  print('imported:', sorted(m for m in ('absl', 'jax', 'googlenet_jax') if m in sys.modules))
"""


def check_one_line(result, version):
  assert result.returncode == 1, result.stderr
  assert 'Traceback' not in result.stderr
  match = ONE_LINE.match(result.stderr)
  assert match, result.stderr
  assert match.group(1) == version


def test_main_on_an_old_python_prints_one_line():
  result = subprocess.run([sys.executable, '-c', FAKE_OLD_PYTHON], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  check_one_line(result, '3.10.12')
  assert result.stdout == 'imported: []\n'


OLD_PYTHONS = sorted(glob.glob(os.path.expanduser('~/.pyenv/versions/3.[89]*/bin/python')) +
                     glob.glob(os.path.expanduser('~/.pyenv/versions/3.10*/bin/python')))


@pytest.mark.skipif(not OLD_PYTHONS, reason='no pyenv Python 3.8 to 3.10 here')
@pytest.mark.parametrize('python', OLD_PYTHONS)
def test_main_on_a_real_old_python_prints_one_line(python):
  version = subprocess.run([python, '-c', 'import platform; print(platform.python_version())'],
                           capture_output=True, text=True, check=True).stdout.strip()
  result = subprocess.run([python, 'main.py'] + ARGS, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  check_one_line(result, version)


def test_main_parses_as_python_3_8():
  with open(MAIN) as f:
    ast.parse(f.read(), filename=MAIN, feature_version=(3, 8))


def readme_commands():
  """The README's two commands, each as its list of `&&` steps."""
  with open(os.path.join(REPO, 'README.md')) as f:
    section = f.read().split('## The two commands', 1)[1].split('\n## ', 1)[0]
  commands = [line for line in section.splitlines() if line.startswith('apt-get update')]
  assert len(commands) == 2, commands
  return [command.split(' && ') for command in commands]


def test_the_two_commands_set_up_a_virtual_environment():
  train, test = readme_commands()
  # The same set-up; the tests also install the GPU compiler.
  assert test[:-2] == train[:-1]
  assert test[-2] == ('.venv/bin/pip install --no-deps --target .gpu-compiler '
                     '-r requirements-gpu-compile.txt')
  assert 'python3 -m venv .venv' in test
  assert 'python3-venv' in test[1].split()
  after_venv = test[test.index('python3 -m venv .venv') + 1:]
  assert all(step.startswith('.venv/bin/') for step in after_venv)
  assert train[-1].startswith('.venv/bin/python main.py ')
  assert test[-1] == '.venv/bin/python -m pytest -q tests'


def test_ci_runs_the_readme_test_command():
  with open(os.path.join(REPO, '.ci/run')) as f:
    lines = [line.strip() for line in f]
  steps = [line for line in lines
           if line and not line.startswith(('#', 'set ', 'cd ', 'export '))]
  assert steps == readme_commands()[1]
  assert 'export DEBIAN_FRONTEND=noninteractive' in lines
