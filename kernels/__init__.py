"""Triton kernels, one op per file (kernel, launcher, public function)."""
