"""The one exception type that reaches the user as a single line."""


class UserError(Exception):
  """Bad input the user can fix: printed as one line by main.py, exit 1, no traceback."""


def describe_os_error(e: OSError) -> str:
  """The OS's words for `e` and the file it names, e.g. 'Is a directory (W/eval.json)'."""
  return f'{e.strerror or e}' + (f' ({e.filename})' if e.filename else '')
