"""What FLIP's ServerApp and ClientApp say to each other inside Flower messages.

An instruction (message type ``train`` or ``evaluate``) carries the global model under ``weights``
and a ``config`` record: the round, the seed, the job type and the trust the server believes it is
talking to. A reply carries the client's ``metrics`` and, for ``train``, its ``weights``. A failure is
a Flower error reply whose reason is short and sanitised: the exception's type, never its message or
traceback (those stay in the trust's own logs, since they could quote data).
"""

from __future__ import annotations

WEIGHTS = "weights"
CONFIG = "config"
METRICS = "metrics"

TRAIN = "train"
EVALUATE = "evaluate"

NUM_EXAMPLES = "num_examples"
# The SuperNode's node config key naming its trust (``--node-config 'trust="CODE"'``).
NODE_TRUST_KEY = "trust"

# Error codes of FLIP's error replies (Flower's own codes are below 100).
ERROR_TRUST_MISMATCH = 1001
ERROR_TRAINER_FAILED = 1002
ERROR_BAD_METRICS = 1003
