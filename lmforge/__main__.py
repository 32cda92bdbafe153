import os
import sys

from lmforge.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A torchrun worker whose work is done leaves without finalizing the interpreter: torch's gloo worker
    # threads outlive destroy_process_group(), and one that releases a finished collective's tensor while
    # Python finalizes aborts the process ("terminate called without an active exception"); see
    # runtime.all_reduce. Every file is written and closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
