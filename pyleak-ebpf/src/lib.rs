#![no_std]
//! Empty: this library target exists so that `pyleak-daemon` can name the eBPF crate as a
//! build dependency (cargo then rebuilds the daemon when the kernel side changes). The
//! programs are the `pyleak` binary of this crate, built for bpfel-unknown-none by
//! `pyleak-daemon/build.rs`.
