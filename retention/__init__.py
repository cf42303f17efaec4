"""retention: early warning of dropout from addiction treatment.

The domain library: the clinic data contract, alliance instruments, point-in-time
features, labels, the model, reasons and the service's store. No web framework
and no scheduler here.
"""

import os

# OpenMP threads that spin while they wait (the GNU runtime's default) fight each other
# and every other process on a small machine: beside one busy process, a LightGBM fit on
# the demo clinic took 3.3-17.6 s instead of 1.3-1.7 s (docs/performance.md). It must be
# set before LightGBM or scikit-learn loads the runtime; an operator's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
