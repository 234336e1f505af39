"""Everything that touches storage: checkpoints (with their manifests and verification), the
one-writer workdir lock and the metrics sinks.

Grouped so the storage layer is one place in the layout: a workdir may be a local folder or an
object-store bucket (`gs://`), and the rules of each (atomic commit, one writer, no append on an
object store) live here, not in the trainer.  The package imports none of its modules, so each
keeps its own layer (tests/test_layers.py)."""
