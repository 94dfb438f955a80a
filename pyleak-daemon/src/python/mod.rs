//! Everything that depends on the CPython version: layouts (`layout`), line tables
//! (`linetable`), building the kernel's per-process `PyTarget` (`target`), and turning
//! code objects into names and lines (`symbolize`).
pub mod layout;
pub mod linetable;
pub mod symbolize;
pub mod target;
