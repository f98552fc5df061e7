"""Tasks for KillablePool tests (imported inside worker processes)."""
import os
import time


def run(payload):
    action, value = payload
    if action == "sleep":
        time.sleep(value)
        return value
    if action == "exit":
        os._exit(value)
    if action == "span":  # (start, end) on the machine-wide monotonic clock, so spans compare across workers
        start = time.monotonic()
        time.sleep(value)
        return start, time.monotonic()
    if action == "raise":
        raise ValueError("task failed")
    return value
