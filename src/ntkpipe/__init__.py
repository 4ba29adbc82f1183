"""ntkpipe: measure how a network's empirical Neural Tangent Kernel moves under task shifts.

Kept import-light on purpose: the Snakefile imports `ntkpipe.config` at parse time, so nothing
here may pull in torch.
"""

__version__ = "0.1.0"
