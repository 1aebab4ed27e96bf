"""Runtime policy: devices and dtypes, CPU threads, memory planning and estimates, several GPUs.

Imports only the core layer; one owner for device and memory decisions."""
