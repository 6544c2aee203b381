"""The built-in English corpus: the documentation topics of `help()` that ship with Python
(`pydoc_data.topics`, about 80 texts, 0.5 MB), so the demo, synthesis and RFT need no download.

    documents = corpus_documents()  # list[str], in a fixed order
"""

from __future__ import annotations


def corpus_documents() -> list[str]:
    """The texts of `pydoc_data.topics.topics` in sorted key order, trailing whitespace stripped."""
    from pydoc_data.topics import topics

    return [topics[key].rstrip() for key in sorted(topics)]
