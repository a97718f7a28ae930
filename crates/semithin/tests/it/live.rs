//! Live and network boots under qemu.
