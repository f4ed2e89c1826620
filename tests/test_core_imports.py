"""The core imports, and lists backends, with dask, distributed and pyspark unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_core_imports_without_engines() -> None:
    script = textwrap.dedent("""
        import sys, warnings

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("dask", "distributed", "pyspark"):
                    raise ImportError(f"{name} is blocked for this test")
                return None

        sys.meta_path.insert(0, Blocker())
        import resflow, resflow.archive, resflow.ingest, resflow.chips, resflow.harmonise
        import resflow.samples, resflow.cli
        from resflow.plugins import list_backends
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = sorted(list_backends())
        assert "dask" not in names and "spark" not in names, names
        broken = " ".join(str(w.message) for w in caught)
        assert "'dask'" in broken and "'spark'" in broken, broken
        assert not any(m.split(".")[0] in ("dask", "distributed", "pyspark")
                       for m in sys.modules)
        print("ok", names)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")
