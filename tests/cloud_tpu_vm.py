"""A Cloud TPU VM on this CPU machine: JAX's own TPU-VM code, with two things stood in.

JAX takes a machine for a Cloud TPU VM when it finds chips and libtpu, or when
JAX_FORCE_TPU_INIT is set (jax/_src/cloud_tpu_init.py). Then its
GceTpuCluster asks the VM's metadata server for this host's number and the
slice's hosts, and `jax.distributed.initialize()` joins them (coordinator: the
first host, port 8482 unless JAX_COORDINATOR_PORT says otherwise). All of that
runs unchanged here. Stood in:

- The metadata server: `MetadataServer`, one per simulated host, on 127.0.0.1,
  answering the paths JAX asks (instance/attributes/agent-worker-number,
  worker-network-endpoints, tpu-env) with the header a real one requires.
- The chips: JAX computes on CPU devices (JAX_PLATFORMS=cpu). Finding no
  chips, JAX sets TPU_SKIP_MDS_QUERY at `import jax` (in the test process too,
  whose environment a main.py process inherits), which keeps its GceTpuCluster
  from asking the metadata server; on a VM nothing sets it, so this file's
  launcher unsets it after `import jax`. Each simulated host has its own libtpu
  lock file (each VM has its own /tmp): `googlenet_jax.runtime.tpu_vm.LIBTPU_LOCK_FILE`.

Run as a script, it is that launcher: `python tests/cloud_tpu_vm.py ARGS` runs
main.py ARGS as the host the environment of `TpuVmHost.environ` describes.
"""

import http.server
import os
import runpy
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK_FILE_VARIABLE = 'TEST_TPU_VM_LIBTPU_LOCK_FILE'


class MetadataServer:
  """One TPU VM's metadata server on a free port of 127.0.0.1, in a thread.

  `attributes` are the instance attributes it serves: the slice's hosts and
  this one's number, as a TPU VM's metadata has them.
  """

  def __init__(self, worker_number: int, num_workers: int):
    self.attributes = {
        'agent-worker-number': str(worker_number),
        # The newer of the two formats JAX reads: one address per host.
        'worker-network-endpoints': ','.join(['127.0.0.1'] * num_workers),
        # JAX reads only MEGASCALE_* keys from it, which a single slice lacks.
        'tpu-env': f"WORKER_ID: '{worker_number}'\n",
    }
    self.requests = []  # The paths asked, in order.
    self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
    self.address = f'127.0.0.1:{self._server.server_address[1]}'
    threading.Thread(target=self._server.serve_forever, daemon=True).start()

  def _handler(self):
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # pylint: disable=invalid-name
        server.requests.append(self.path)
        prefix = '/computeMetadata/v1/instance/attributes/'
        value = (server.attributes.get(self.path[len(prefix):])
                 if self.path.startswith(prefix) else None)
        if self.headers.get('Metadata-Flavor') != 'Google':
          self._answer(403, 'Missing Metadata-Flavor: Google header.')
        elif value is None:
          self._answer(404, 'Not found.')
        else:
          self._answer(200, value)

      def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header('Metadata-Flavor', 'Google')
        self.send_header('Content-Type', 'application/text')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, *args):
        del args  # Quiet: the tests read `requests`.

    return Handler

  def stop(self) -> None:
    self._server.shutdown()
    self._server.server_close()


class TpuVmHost:
  """One simulated host of a TPU slice: its metadata server and its /tmp."""

  def __init__(self, worker_number: int, num_workers: int, tmp_dir: str):
    self.metadata = MetadataServer(worker_number, num_workers)
    self.lock_file = os.path.join(tmp_dir, 'libtpu_lockfile')

  def environ(self, coordinator_port: int) -> dict[str, str]:
    """What a process needs to run as this host (with tests/cloud_tpu_vm.py as launcher)."""
    return {
        'JAX_FORCE_TPU_INIT': '1',  # What a VM's chips and libtpu tell JAX.
        'JAX_PLATFORMS': 'cpu',  # The CPU computes in the chips' place.
        'GCE_METADATA_IP': self.metadata.address,
        # JAX's own override of its coordinator port 8482: free ports, so that
        # tests may run side by side.
        'JAX_COORDINATOR_PORT': str(coordinator_port),
        LOCK_FILE_VARIABLE: self.lock_file,
    }

  def stop(self) -> None:
    self.metadata.stop()


def slice_of_hosts(num_hosts: int, tmp_path) -> list[TpuVmHost]:
  """`num_hosts` simulated hosts of one slice, each with its own /tmp under `tmp_path`."""
  hosts = []
  for i in range(num_hosts):
    tmp_dir = os.path.join(tmp_path, f'host{i}_tmp')
    os.makedirs(tmp_dir, exist_ok=True)
    hosts.append(TpuVmHost(i, num_hosts, tmp_dir))
  return hosts


def run_main_as_this_host(args: list[str]) -> None:
  """Runs main.py with `args` after JAX's start-up, as on a VM with chips."""
  import jax  # pylint: disable=g-import-not-at-top,unused-import
  os.environ.pop('TPU_SKIP_MDS_QUERY', None)  # Set only because there are no chips.
  sys.path.insert(0, REPO)
  from googlenet_jax.runtime import tpu_vm  # pylint: disable=g-import-not-at-top
  tpu_vm.LIBTPU_LOCK_FILE = os.environ[LOCK_FILE_VARIABLE]
  sys.argv = ['main.py', *args]
  runpy.run_path(os.path.join(REPO, 'main.py'), run_name='__main__')


if __name__ == '__main__':
  run_main_as_this_host(sys.argv[1:])
