import sys

from task_scheduler.cli import main

sys.exit(main())
