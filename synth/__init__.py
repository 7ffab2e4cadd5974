"""The synthetic default: a GalSim generator of Galaxy10-like images (``galaxy10 data synth``), a product of its
own. ``params`` holds each class's parameter ranges, ``shapes`` the pieces a galaxy is built from, ``render`` one
image, ``generator`` a whole file (parallel, resumable, stamped SYNTHETIC). Depends on ``core`` and
``pipelines`` (the class set, the image limits) only."""
