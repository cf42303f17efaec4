"""retention: early warning of dropout from addiction treatment.

The domain library: the clinic data contract, alliance instruments, point-in-time
features, labels, the model, reasons and the service's store. No web framework
and no scheduler here.
"""

__version__ = "0.1.0"
