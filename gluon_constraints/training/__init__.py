"""Enforcement: the optimizer wrapper (which parameter servers unpickle, so importing this
package imports nothing), the trainer and ``enforce``, ``apply_constraints``,
``verify_constraints`` and the Estimator handler."""
