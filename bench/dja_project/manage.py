#!/usr/bin/env python
"""manage.py of the django-apscheduler comparison project.

Same as ``python -m bench.dja_project``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.dja_project.__main__ import main  # noqa: E402

if __name__ == "__main__":
    main()
