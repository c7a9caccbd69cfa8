import sys

from .runs import pin_from_env

pin_from_env()  # before torch starts its threads: they inherit the CPUs

from .cli import main  # noqa: E402

sys.exit(main())
