"""Running services: the worker (its lanes, its connection loop and the pipeline driver
that takes each message through screen, verify, decode, run and reply/settle), the
service classes, redelivery, time limits, queue types, and the process manager."""
