//! `pyleak doctor`: what this host supports, and what pyleak would do with a given process —
//! each check with its result and, when it fails, what to do about it.
use std::{fmt::Write as _, path::Path};

use crate::{
    btf, discovery,
    discovery::Linkage,
    probes::{self, LoadOptions, Probes},
    python::{layout, target},
    session::{self, ALLOCATOR_FUNCTIONS, NATIVE_FUNCTIONS},
    sites,
};

/// One line of the diagnosis.
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

/// Runs every check, prints them, and returns whether pyleak can trace (the host, and the
/// target when one was given).
pub fn run(pid: Option<u32>, out: &mut String) -> bool {
    let mut checks = host_checks();
    let host_ok = checks.iter().all(|c| c.ok);
    print_section(out, "host", &checks);
    let mut target_ok = true;
    if let Some(pid) = pid {
        checks = target_checks(pid, out);
        target_ok = checks.iter().all(|c| c.ok);
        print_section(out, &format!("pid {pid}"), &checks);
    }
    let _ = writeln!(
        out,
        "\n{}",
        match (host_ok, target_ok) {
            (true, true) => "pyleak can trace here.",
            (false, _) => "pyleak cannot trace on this host: see the failed checks above.",
            (true, false) => "pyleak cannot trace this process: see the failed checks above.",
        }
    );
    host_ok && target_ok
}

fn print_section(out: &mut String, title: &str, checks: &[Check]) {
    let _ = writeln!(out, "{title}:");
    for c in checks {
        let mark = if c.ok { "ok " } else { "NO " };
        let _ = writeln!(out, "  [{mark}] {}: {}", c.name, c.detail);
    }
}

fn host_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    checks.push(kernel_check(release, kernel_version(release)));
    let btf_path = Path::new(btf::SYS_FS_VMLINUX);
    checks.push(match btf::task_fsbase_offset() {
        Ok(off) => Check {
            name: "kernel BTF",
            ok: true,
            detail: format!("{} (task_struct.thread.fsbase at {off})", btf_path.display()),
        },
        Err(e) => Check {
            name: "kernel BTF",
            ok: false,
            detail: format!("{e}: boot a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
        },
    });
    let pmu = Path::new("/sys/bus/event_source/devices/uprobe/type");
    checks.push(Check {
        name: "uprobe events",
        ok: pmu.exists(),
        detail: if pmu.exists() {
            "uprobe PMU present".into()
        } else {
            format!("{} missing: the kernel needs CONFIG_UPROBE_EVENTS=y", pmu.display())
        },
    });
    let admin = probes::has_sys_admin();
    checks.push(Check {
        name: "CAP_SYS_ADMIN",
        ok: admin,
        detail: if admin {
            "present (loading eBPF programs, attaching uprobes)".into()
        } else {
            "missing: run pyleak as root (uprobes need CAP_SYS_ADMIN on current kernels)".into()
        },
    });
    if admin {
        checks.push(match Probes::load(LoadOptions::default()) {
            Ok(_) => Check {
                name: "eBPF programs",
                ok: true,
                detail: "loaded and accepted by the verifier".into(),
            },
            Err(e) => Check { name: "eBPF programs", ok: false, detail: format!("{e:#}") },
        });
    }
    checks.push(match target::pthread_specific_offset() {
        Some(off) => Check {
            name: "C library",
            ok: true,
            detail: format!(
                "pthread_getspecific emulation: specific_1stblock at {off:#x} (stacks of threads that released the GIL)"
            ),
        },
        None => Check {
            name: "C library",
            ok: true,
            detail: "could not measure struct pthread: allocations made with the GIL released will have no Python stack".into(),
        },
    });
    checks
}

/// The oldest kernel pyleak runs on: probes attach through uprobe_multi links (6.6), the
/// stack walk uses bpf_loop (5.17).
const MIN_KERNEL: (u32, u32) = (6, 6);

fn kernel_check(release: &str, version: (u32, u32)) -> Check {
    let (major, minor) = MIN_KERNEL;
    Check {
        name: "kernel",
        ok: version >= MIN_KERNEL,
        detail: if version >= MIN_KERNEL {
            format!("{release} (uprobe_multi links need {major}.{minor}+)")
        } else {
            format!(
                "{release}: too old, pyleak attaches its probes with uprobe_multi links (Linux {major}.{minor}+)"
            )
        },
    }
}

fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

fn target_checks(pid: u32, out: &mut String) -> Vec<Check> {
    let mut checks = Vec::new();
    let _ = writeln!(out, "\ncommand: {}", discovery::command_line(pid));
    let interp = match discovery::find_interpreter(pid) {
        Ok(i) => i,
        Err(e) => {
            checks.push(Check { name: "interpreter", ok: false, detail: format!("{e:#}") });
            return checks;
        }
    };
    checks.push(Check {
        name: "interpreter",
        ok: true,
        detail: format!(
            "CPython {} in {} ({}, loaded at {:#x})",
            interp.version,
            interp.path,
            match interp.linkage {
                Linkage::Shared => "shared libpython",
                Linkage::Static => "linked into the executable",
            },
            interp.bias
        ),
    });
    let layout = match layout::resolve(&interp, pid) {
        Ok(resolved) => {
            checks.push(Check { name: "layout", ok: true, detail: resolved.describe() });
            resolved.layout
        }
        Err(e) => {
            // An unsupported version's error lists the supported ones.
            checks.push(Check { name: "layout", ok: false, detail: format!("{e:#}") });
            return checks;
        }
    };
    checks.push(match target::build(&interp, &layout) {
        Ok(t) => Check {
            name: "thread state",
            ok: true,
            detail: format!(
                "{}; fallback for GIL-released threads: {}",
                match t.tstate_kind {
                    pyleak_common::TSTATE_GLOBAL => "_PyRuntime.gilstate.tstate_current",
                    pyleak_common::TSTATE_TLS_DYNAMIC if t.tls_static != 0 => {
                        "_Py_tss_tstate thread-local (shared library TLS, static: libpython is loaded at start-up, so it is read at one offset from each thread pointer)"
                    }
                    pyleak_common::TSTATE_TLS_DYNAMIC => "_Py_tss_tstate thread-local (shared library TLS)",
                    pyleak_common::TSTATE_KEY_ONLY => "none (stripped: no _Py_tss_tstate symbol)",
                    _ => "_Py_tss_tstate thread-local (executable TLS)",
                },
                if t.pthread_specific == pyleak_common::ABSENT { "none" } else { "autoTSSkey pthread key" }
            ),
        },
        Err(e) => Check { name: "thread state", ok: false, detail: format!("{e:#}") },
    });
    // What `trace` would probe now (the allocator tables as the process has them).
    let plan = sites::interpreter_sites(
        pid,
        &interp,
        ALLOCATOR_FUNCTIONS,
        sites::Options {
            planner: true,
            before_init: false,
            libc_text: discovery::find_libc(pid).ok().flatten().map(|l| l.text),
        },
    );
    let (sites, missing) = (&plan.sites, &plan.missing);
    let _ = writeln!(
        out,
        "probe plan in {} (public functions -> probed function; entry probe at file offset +N):",
        interp.path
    );
    sites::describe(&plan, out);
    for note in &plan.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    checks.push(Check {
        name: "allocator coverage",
        ok: !sites.is_empty(),
        detail: if session::allocator_inlined(&interp.image) {
            format!("partial: {}", session::INLINED_NOTE)
        } else if missing.is_empty() {
            "full: every allocator entry point is exported and probed".into()
        } else if sites.is_empty() {
            "none of CPython's allocator functions can be probed".into()
        } else {
            format!(
                "partial: not exported: {} (calls inlined into the interpreter are not seen; run the target with PYTHONMALLOC=malloc to route every allocation through libc malloc)",
                missing.join(", ")
            )
        },
    });
    match discovery::find_libc(pid) {
        Ok(Some(lib)) => {
            let native = sites::public_sites(&lib.image, NATIVE_FUNCTIONS, true);
            let _ = writeln!(out, "probe plan in {}:", lib.path);
            sites::describe(&native, out);
            let names: Vec<_> = native.rows.iter().flat_map(|r| r.covers.iter().copied()).collect();
            checks.push(Check {
                name: "native allocations",
                ok: true,
                detail: format!("{} in {}", names.join(", "), lib.path),
            });
        }
        Ok(None) => checks.push(Check {
            name: "native allocations",
            ok: true,
            detail: "no C library mapped: allocations outside CPython's allocator are not seen".into(),
        }),
        Err(e) => checks.push(Check { name: "native allocations", ok: false, detail: format!("{e:#}") }),
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v669"), (6, 18));
        assert_eq!(kernel_version("5.4.0"), (5, 4));
        assert_eq!(kernel_version(""), (0, 0));
        assert!(kernel_check("6.6.0", (6, 6)).ok);
        let old = kernel_check("6.1.0-18-amd64", (6, 1));
        assert!(!old.ok && old.detail.contains("uprobe_multi links (Linux 6.6+)"), "{}", old.detail);
    }

    #[test]
    fn doctor_on_a_non_python_process_fails_with_the_reason() {
        let mut out = String::new();
        let ok = run(Some(std::process::id()), &mut out);
        assert!(!ok, "{out}");
        assert!(out.contains("is not a Python process"), "{out}");
        assert!(out.contains("[NO ] interpreter"), "{out}");
    }
}
