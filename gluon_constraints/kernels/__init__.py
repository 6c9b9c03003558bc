"""The fused kernels: C++ source, its build/cache/load, and in-place projection that lowers
each constraint to the kernel where its class declares a lowering, stock operators elsewhere."""
