"""Running images: host probing, QEMU argv, VM state, lifecycle."""
