//! Integration tests of the `semithin` command, one binary with modules by theme.
//! They run as root (ownership, device nodes, chroots) and use real tools: tar, getfattr,
//! setcap, setfacl, unsquashfs, debootstrap.

mod common;
mod fidelity;
mod gc;
mod real_root;
