import faulthandler
import os
import signal
import subprocess
import sys


def handler(event, context):
    if event.get("how") == "segfault":
        faulthandler.enable()                   # writes the fatal error's traceback to fd 2
        os.kill(os.getpid(), signal.SIGSEGV)
    # a child whose output is not piped, and writes straight to the descriptors
    subprocess.run([sys.executable, "-c", "import sys; print('child stdout line'); "
                    "sys.stderr.write('child stderr line\\n')"], check=True)
    os.write(1, b"fd 1 line\n")
    os.write(2, b"fd 2 line\n")
    print("print line")
    return "ok"
