"""mitogen's side of the bench's whole-process row: start a fresh local
context, run `true` in it, shut down. Timed from outside, as a whole
process, beside `spore run local -- true`."""

import subprocess

import mitogen.master

broker = mitogen.master.Broker()
router = mitogen.master.Router(broker)
try:
    router.local().call(subprocess.call, ["true"])
finally:
    broker.shutdown()
    broker.join()
