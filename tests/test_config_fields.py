"""Every field of every shipped config has one role (googlenet_jax/runtime/config_fields.py)."""

import glob
import os
import runpy

import pytest

from conftest import REPO
from googlenet_jax.runtime import config_fields


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO, 'configs', '*.py'))),
                         ids=os.path.basename)
def test_every_config_field_has_a_role_and_every_role_a_field(path):
  fields = set(runpy.run_path(path)['get_config']().keys())
  assert not fields - set(config_fields.ROLES), 'fields without a role'
  assert not set(config_fields.ROLES) - fields, 'roles of fields that are gone'
