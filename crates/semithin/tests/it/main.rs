//! Integration tests of the `semithin` command, one binary with modules by theme.
//! They run as root (ownership, device nodes, chroots) and use real tools: tar, getfattr,
//! setcap, setfacl, unsquashfs, debootstrap, and python3 to write hostile tar archives.

mod apt;
mod assignment;
mod backup;
mod bad_input;
mod boot;
mod boot_artifacts;
mod bundle;
mod capture;
mod channels;
mod cli;
mod common;
mod dashboard;
mod deb;
mod demo;
mod disk_boot;
mod fidelity;
mod fleet;
mod gc;
mod hostile_text;
mod image;
mod jobs;
mod live;
mod netboot;
mod openapi;
mod operations;
mod packaging;
mod profiles;
mod qemu;
mod real_root;
mod relay;
mod relay_batch;
mod rollout;
mod systemd_unit;
mod tamper;
mod torrent;
mod trust_renew;
mod tuf_client;
mod tuf_publish;
mod vars;
