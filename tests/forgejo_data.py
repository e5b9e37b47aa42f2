"""Where the tests find Forgejo's reference data, vendored in ``tests/data/forgejo``.

``openapi-v1.json`` is Forgejo v16's official API spec and ``examples/`` holds real recorded
webhook payloads and API responses (their origin is in ``examples/SOURCES.md``). They are kept
in the repository so the suite runs the same from any checkout.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "forgejo"
EXAMPLES = DATA / "examples"
SPEC_PATH = DATA / "openapi-v1.json"
