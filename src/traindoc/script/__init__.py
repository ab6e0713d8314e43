"""``traindoc run SCRIPT.py``: the one-batch doctor and the monitor on an unmodified training script.

`frames` finds the user's own line in a stack; `capture` puts traindoc's global hooks into PyTorch and
records what the script builds and calls (the model and its batch, the loss and its targets, the
optimizer, schedulers, data loaders, transformer layers), each with the line that did it; `session`
runs the doctor at the first optimizer step and the watch after it, and turns a crash into a
diagnosis; `runner` runs the script as ``python SCRIPT.py`` would and returns the combined report.
"""
