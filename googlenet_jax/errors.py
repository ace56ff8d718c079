"""The one exception type that reaches the user as a single line."""


class UserError(Exception):
  """Bad input the user can fix: printed as one line by main.py, exit 1, no traceback."""
