"""Where and how compatkit runs: device and precision, processes, the run log, durable files.

Nothing here knows about methods, models or the protocol; every other package may use it.
"""
