"""``python -m tinyexp.report``: the report CLI (:func:`tinyexp.report.cli.main`)."""

import sys

from tinyexp.report.cli import main

sys.exit(main())
