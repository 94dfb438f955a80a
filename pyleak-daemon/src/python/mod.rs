//! Everything that depends on the CPython version: layouts (`layout`, and for 3.13+ the
//! interpreter's own `_Py_DebugOffsets` in `debug_offsets`), line tables (`linetable`),
//! building the kernel's per-process `PyTarget` (`target`), and turning code objects into
//! names and lines (`symbolize`).
pub mod debug_offsets;
pub mod layout;
pub mod linetable;
pub mod symbolize;
pub mod target;
