"""The one home for paths and files: a workdir, a checkpoint or a cache may be a local folder or
an object-store URL (`gs://bucket/...`); every file flmjax reads or writes goes through here.

Built on `etils.epath`, the path layer orbax already uses, so our files and orbax's agree on what
a path means.  For `gs://` epath has two backends: TensorFlow's `tf.io.gfile` (picked whenever
TensorFlow is importable, and seqio installs it) and fsspec/gcsfs.  We pick gcsfs
(`EPATH_USE_TF=false` unless the user set it): `tf.io.gfile`'s GCS client has the endpoint
`www.googleapis.com` compiled in, so nothing but Google's servers can answer it (no emulator, no
test), while gcsfs honours `STORAGE_EMULATOR_HOST` and offers generation preconditions
(`ifGenerationMatch`), which the workdir lock needs.  gcsfs's experimental zonal/HNS bucket
probe is off (`GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`): it asks a gRPC control plane that an
emulator does not serve and waits 60 s per bucket.  fsspec's listing cache is off: other
processes (TensorStore, other hosts) write the same prefixes, and a cached listing would hide
their objects (a new checkpoint step, a lock).

Local paths behave exactly as before (the `os` calls, atomic `os.replace`, `O_EXCL`); object
stores have no rename and no append, so `write_atomic` is one object PUT (atomic by itself),
`move` is copy-then-delete (not atomic: callers that need a commit write a marker last), and
`create_exclusive` is a create-only PUT (`ifGenerationMatch=0`).
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
from typing import IO, Optional

os.environ.setdefault('EPATH_USE_TF', 'false')
os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')

import fsspec  # noqa: E402
import google.auth  # noqa: E402
import google.auth.exceptions  # noqa: E402
from etils import epath  # noqa: E402  (after the backend choice above)
from etils.epath import gpath as _gpath  # noqa: E402

# epath decides once per process (functools.cache) and on the first use of *any* path, local
# ones too: JAX's compilation cache (JAX_COMPILATION_CACHE_DIR) may have asked before flmjax was
# imported, with the variable unset.  Ask again now that it is set.
getattr(_gpath._is_tf_installed, 'cache_clear', lambda: None)()  # pylint: disable=protected-access

fsspec.config.conf.setdefault('gs', {}).setdefault('use_listings_cache', False)
# gcsfs logs each failed retry with its traceback (TensorFlow's absl sets up root logging, so they
# would reach stderr around our one-line error): the final error is what we report.
logging.getLogger('gcsfs').propagate = False
logging.getLogger('gcsfs').addHandler(logging.NullHandler())

SCHEMES = ('gs',)
_URL_RE = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')


class StorageError(OSError):
  """A path that cannot be used (unknown scheme, missing bucket, no credentials, unreachable
  endpoint, permission): the message is one line naming the path."""


def scheme(path: str) -> Optional[str]:
  """'gs' for `gs://b/x`, None for a local path."""
  m = _URL_RE.match(os.fspath(path))
  return m.group(1).lower() if m else None


def is_remote(path: str) -> bool:
  return scheme(path) is not None


def check_scheme(path: str) -> None:
  """Refuse a URL whose scheme flmjax cannot write (one line, before anything is written)."""
  s = scheme(path)
  if s is not None and s not in SCHEMES:
    raise StorageError(f'{path}: unsupported storage scheme {s}:// (flmjax reads and writes '
                       f'local paths and {", ".join(x + "://" for x in SCHEMES)})')


def absolute(path: str) -> str:
  """An absolute local path, or the URL unchanged (minus a trailing slash)."""
  path = os.fspath(path)
  if is_remote(path):
    check_scheme(path)
    return path.rstrip('/') if path.rstrip('/').count('/') > 2 else path
  return os.path.abspath(path)


def join(base: str, *parts: str) -> str:
  return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def dirname(path: str) -> str:
  return posixpath.dirname(path.rstrip('/')) if is_remote(path) else os.path.dirname(path)


def basename(path: str) -> str:
  return posixpath.basename(path.rstrip('/')) if is_remote(path) else os.path.basename(path)


def split(path: str) -> tuple[str, str]:
  return dirname(path), basename(path)


def epath_of(path: str) -> epath.Path:
  check_scheme(path)
  check_credentials(path)
  return epath.Path(path)


def exists(path: str) -> bool:
  return os.path.exists(path) if not is_remote(path) else epath_of(path).exists()


def isdir(path: str) -> bool:
  """A folder; on an object store, a prefix with at least one object under it."""
  return os.path.isdir(path) if not is_remote(path) else epath_of(path).is_dir()


def isfile(path: str) -> bool:
  return os.path.isfile(path) if not is_remote(path) else epath_of(path).is_file()


def listdir(path: str) -> list[str]:
  """Names in a folder ([] when it does not exist)."""
  if not is_remote(path):
    return os.listdir(path) if os.path.isdir(path) else []
  p = epath_of(path)
  if not p.is_dir():
    return []
  return [c.name for c in p.iterdir()]


def makedirs(path: str) -> None:
  """A local folder (and its parents); nothing on an object store (prefixes need no folder)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def open_file(path: str, mode: str = 'r') -> IO:
  """A file object; on an object store, 'w' uploads on close and 'a' is refused (no append)."""
  if not is_remote(path):
    return open(path, mode)  # pylint: disable=unspecified-encoding
  if 'a' in mode or '+' in mode:
    raise StorageError(f'{path}: object stores cannot append or update in place')
  return epath_of(path).open(mode)


def read_bytes(path: str) -> bytes:
  with open_file(path, 'rb') as f:
    return f.read()


def read_text(path: str) -> str:
  with open_file(path, 'r') as f:
    return f.read()


def write_atomic(path: str, data: bytes | str) -> None:
  """Replace `path` with `data` so a reader sees the old or the new content, never a mix: local
  files through a fsynced temporary file and `os.replace`; on an object store one PUT."""
  raw = data.encode() if isinstance(data, str) else data
  if is_remote(path):
    epath_of(path).write_bytes(raw)
    return
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', prefix='.tmp-',
                             suffix='-' + os.path.basename(path) + '.tmp')
  with os.fdopen(fd, 'wb') as f:  # a unique name: two concurrent writers never share it
    f.write(raw)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def local_copy(path: str) -> str:
  """A local file with `path`'s bytes, for libraries that open files only by local name
  (SentencePiece).  A local path is returned as is.  An object is read (it is the source of
  truth) and mirrored once per content under a per-user temp folder keyed by its SHA-256, so a
  changed object gets a new copy and a stale copy is never used."""
  if not is_remote(path):
    return path
  raw = read_bytes(path)
  digest = hashlib.sha256(raw).hexdigest()[:32]
  uid = os.getuid() if hasattr(os, 'getuid') else 'user'
  local = os.path.join(tempfile.gettempdir(), f'flmjax-{uid}', 'mirror', digest, basename(path))
  if not os.path.isfile(local):
    os.makedirs(os.path.dirname(local), exist_ok=True)
    write_atomic(local, raw)
  return local


def glob(pattern: str) -> list[str]:
  """Paths matching a glob (`**` recursive), unsorted; `~` expands locally.  On an object store
  the matches are `scheme://bucket/key` URLs."""
  if not is_remote(pattern):
    return _glob.glob(os.path.expanduser(pattern), recursive=True)
  fs, key = _fs(pattern)
  return [f'{scheme(pattern)}://{k}' for k in fs.glob(key)]


def stat_key(path: str) -> tuple[str, int, int]:
  """What identifies a file's content for cache keys: its absolute path, size, and modification
  time in ns (an object's generation, which every write changes)."""
  if not is_remote(path):
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns
  fs, key = _fs(path)
  fs.invalidate_cache(key)
  info = fs.info(key)
  return path, int(info.get('size', 0)), int(info.get('generation') or 0)


def getsize(path: str) -> int:
  return os.path.getsize(path) if not is_remote(path) else epath_of(path).stat().length


def getmtime(path: str) -> float:
  return os.path.getmtime(path) if not is_remote(path) else float(epath_of(path).stat().mtime)


def walk_files(root: str) -> list[str]:
  """Every file under `root`, relative to it, sorted ('/'-separated on object stores)."""
  if not is_remote(root):
    return sorted(os.path.relpath(os.path.join(r, n), root)
                  for r, _, names in os.walk(root) for n in names)
  fs, prefix = _fs(root)
  if not fs.isdir(prefix):
    return []
  return sorted(posixpath.relpath(f, prefix) for f in fs.find(prefix))


def tree_bytes(root: str) -> int:
  """Bytes of the files under `root` (0 when it is gone)."""
  if not is_remote(root):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(root) for f in fs)
  fs, prefix = _fs(root)
  return sum(int(i.get('size', 0)) for i in fs.find(prefix, detail=True).values())


def remove(path: str) -> None:
  if not is_remote(path):
    os.remove(path)
  else:
    epath_of(path).unlink()


def rmtree(path: str) -> None:
  if not is_remote(path):
    shutil.rmtree(path)
  else:
    fs, prefix = _fs(path)
    files = fs.find(prefix)
    if files:
      fs.rm(files)
    fs.invalidate_cache(prefix)


def move(src: str, dst: str) -> None:
  """Rename a file or folder.  Local: one atomic rename.  Object store: copy every object, then
  delete the source (not atomic: a crash in between leaves both, never neither)."""
  if not is_remote(src) and not is_remote(dst):
    shutil.move(src, dst)
    return
  fs, s = _fs(src)
  _, d = _fs(dst)
  if fs.isdir(s):
    for rel in walk_files(src):
      fs.copy(posixpath.join(s, rel), posixpath.join(d, rel))
  else:
    fs.copy(s, d)
  rmtree(src) if fs.isdir(s) else fs.rm(s)
  fs.invalidate_cache()


def copy(src: str, dst: str) -> None:
  """Copy one file: locally a hard link where the file system allows (checkpoint files are
  never rewritten in place), else a copy; within an object store a server-side copy."""
  if not is_remote(src) and not is_remote(dst):
    os.makedirs(os.path.dirname(dst) or '.', exist_ok=True)
    try:
      os.link(src, dst)
    except OSError:
      shutil.copy2(src, dst)
  elif scheme(src) == scheme(dst):
    fs, s = _fs(src)
    fs.copy(s, _fs(dst)[1])
  else:
    makedirs(dirname(dst))
    write_atomic(dst, read_bytes(src))


def copytree(src: str, dst: str, last: Optional[str] = None) -> None:
  """Copy every file under `src` to `dst` (hard links where a local file system allows, see
  `copy`).  Object stores: object by object, the file named `last` (a commit marker) copied
  last, so a cut copy lacks it."""
  if not is_remote(src) and not is_remote(dst):
    shutil.copytree(src, dst, copy_function=copy)
    return
  for rel in sorted(walk_files(src), key=lambda r: r == last):
    copy(join(src, rel), join(dst, rel))


def create_exclusive(path: str, data: bytes) -> int:
  """Create `path` holding `data` only if it does not exist; FileExistsError if it does.
  Returns the object's generation (0 for a local file).  Local: O_CREAT|O_EXCL (atomic on
  local disks and NFSv3+); object store: a create-only PUT (`ifGenerationMatch=0`)."""
  if not is_remote(path):
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    return 0
  return put_if_generation(path, data, 0)


def put_if_generation(path: str, data: bytes, generation: int) -> int:
  """Object stores: write `path` only if its generation is `generation` (0: only if absent);
  FileExistsError when the precondition fails.  Returns the new generation.  A multipart upload
  with `ifGenerationMatch` (GCS honours it on every upload; fake-gcs-server on this one)."""
  fs, key = _fs(path)
  bucket, name = key.split('/', 1)
  boundary = '==flmjax-precondition=='
  body = (f'--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n'
          f'{json.dumps({"name": name})}\r\n--{boundary}\r\n'
          'Content-Type: application/octet-stream\r\n\r\n').encode() + data + \
      f'\r\n--{boundary}--'.encode()
  out = fs.call('POST', f'{fs._location}/upload/storage/v1/b/{bucket}/o',  # pylint: disable=protected-access
                uploadType='multipart', ifGenerationMatch=str(generation),
                headers={'Content-Type': f'multipart/related; boundary="{boundary}"'},
                data=body, json_out=True)
  fs.invalidate_cache(posixpath.dirname(key))
  return int(out['generation'])


def generation(path: str) -> Optional[int]:
  """The object's generation, None when it does not exist (0 for a local file)."""
  if not is_remote(path):
    return 0 if os.path.exists(path) else None
  fs, key = _fs(path)
  fs.invalidate_cache(key)
  try:
    info = fs.info(key)
  except FileNotFoundError:
    return None
  g = info.get('generation')
  return int(g) if g is not None else None


def _fs(path: str):
  """(fsspec filesystem, bucket/key) for an object-store URL."""
  check_scheme(path)
  check_credentials(path)
  return fsspec.filesystem(scheme(path)), path.split('://', 1)[1].rstrip('/')


def delete_if_generation(path: str, generation: int) -> bool:
  """Object stores: delete `path` only if it is still generation `generation` (one request,
  `ifGenerationMatch`).  False when it is another generation or gone.  Google's servers honour
  the precondition; the bundled fake-gcs-server ignores it on delete (callers that must be safe
  there too first overwrite the object conditionally, see workdir_lock)."""
  fs, key = _fs(path)
  bucket, name = key.split('/', 1)
  try:
    fs.call('DELETE', 'b/{}/o/{}', bucket, name, ifGenerationMatch=str(generation))
  except (FileExistsError, FileNotFoundError):  # 412: another generation; 404: gone
    return False
  finally:
    fs.invalidate_cache(posixpath.dirname(key))
  return True


def disk_free(path: str) -> Optional[int]:
  """Free bytes on the local filesystem holding `path`; None on an object store (no limit we
  can see)."""
  return None if is_remote(path) else shutil.disk_usage(path).free


_credentials_checked = False


def check_credentials(path: str) -> None:
  """`gs://` against Google (no `STORAGE_EMULATOR_HOST`) needs credentials: without any, gcsfs
  falls back to anonymous requests, which end in an unclear error after its retries (or wait on
  an endpoint this host cannot reach).  So Application Default Credentials are looked up once
  per process, before the first request, and their absence is one line saying what to do.  The
  lookup is google-auth's own (GOOGLE_APPLICATION_CREDENTIALS, gcloud's file under $HOME or
  $CLOUDSDK_CONFIG, the metadata server of a GCE / TPU VM; bounded by its timeouts)."""
  global _credentials_checked  # pylint: disable=global-statement
  if _credentials_checked or scheme(path) != 'gs' or os.environ.get('STORAGE_EMULATOR_HOST'):
    return
  try:
    google.auth.default()
  except google.auth.exceptions.DefaultCredentialsError as e:
    why = ' '.join(str(e).split())[:300]
    raise StorageError(
        f'cannot use {path}: no Google Cloud credentials found ({why}); run `gcloud auth '
        'application-default login`, set GOOGLE_APPLICATION_CREDENTIALS to a service-account '
        'key file, or run on a VM whose service account may use the bucket') from None
  _credentials_checked = True


def _status(e: BaseException) -> Optional[int]:
  """The HTTP status behind a client's error, where it says one."""
  code = getattr(e, 'code', None)
  if isinstance(code, int):
    return code
  return 403 if str(e).startswith('Forbidden') else None  # gcsfs's 403 is a bare OSError


def storage_error(path: str, e: BaseException, doing: str) -> StorageError:
  """One line for a failed request on an object store: what failed, why, and what to check (a
  refused permission says so and names the bucket)."""
  if isinstance(e, StorageError):
    return e
  why = describe_error(e)
  status = _status(e)
  bucket = path.split('://', 1)[-1].split('/', 1)[0]
  if status == 403 or isinstance(e, PermissionError):
    return StorageError(f'cannot {doing} {path}: permission denied ({why}); check that the '
                        f'account of your credentials may create, read and delete objects in '
                        f'bucket {bucket} (e.g. roles/storage.objectAdmin on it)')
  if status == 401:
    return StorageError(f'cannot {doing} {path}: the credentials were refused ({why}); renew '
                        'them (`gcloud auth application-default login`) or check '
                        'GOOGLE_APPLICATION_CREDENTIALS')
  return StorageError(f'cannot {doing} {path} ({why}); check that the bucket exists, the '
                      'credentials and the endpoint')


def describe_error(e: BaseException) -> str:
  """One line for a storage error: the OS's reason, or the client's first line."""
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  text = str(e).strip()
  return f'{type(e).__name__}: {text.splitlines()[0][:200] if text else ""}'

