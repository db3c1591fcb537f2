"""Where the shared real-world corpus lives, for the tests that loop over it.

``SAFELOAD_CORPUS`` wins (even when it points nowhere: then the tests skip);
otherwise ``shared/corpus`` beside the checkout, as on the project's machines
and in CI. The corpus is read in place, never copied into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["CORPUS", "CORPUS_ROOT", "corpus_files", "needs_corpus"]

_configured = os.environ.get("SAFELOAD_CORPUS")
#: where the corpus should be (it may be absent)
CORPUS_ROOT = (Path(_configured) if _configured
               else Path(__file__).resolve().parents[2].parent / "shared" / "corpus")
#: the corpus folder, or None when it is absent
CORPUS = CORPUS_ROOT if CORPUS_ROOT.is_dir() else None

needs_corpus = pytest.mark.skipif(CORPUS is None, reason="corpus not found (set SAFELOAD_CORPUS)")


def corpus_files(category: str) -> list[Path]:
    """Files of ``benign`` or ``malicious``, sorted; empty when absent."""
    if CORPUS is None or not (CORPUS / category).is_dir():
        return []
    return sorted(p for p in (CORPUS / category).iterdir() if p.is_file())
