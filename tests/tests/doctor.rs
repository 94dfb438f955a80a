// `pyleak doctor`: the host checks pass on this machine (and say why), a
// Python target is described with its probe sites, a non-Python target fails
// with the reason, and Debian's LTO build is reported as partial coverage with
// the remedy.

use pyleak_e2e::{KillOnDrop, doctor_of, for_each_python, pyleak, require_root, serial};

#[test]
fn doctor_host_checks_pass() {
    let _serial = serial();
    require_root();
    let finished = pyleak(["doctor"]);
    assert_eq!(finished.status.code(), Some(0), "doctor failed on this host\n{finished}");
    for check in ["kernel BTF", "uprobe events", "CAP_SYS_ADMIN", "eBPF programs"] {
        assert!(
            finished.stdout.contains(&format!("[ok ] {check}")),
            "no passing `{check}` check\n{finished}"
        );
    }
    assert!(finished.stdout.contains("pyleak can trace here."), "{finished}");
}

#[test]
fn doctor_describes_a_python_target() {
    for_each_python(|python| {
        let finished = doctor_of(python.path.to_str().expect("utf-8"));
        assert_eq!(finished.status.code(), Some(0), "{finished}");
        assert!(finished.stdout.contains(&format!("CPython {}", python.version)), "{finished}");
        assert!(finished.stdout.contains("PyObject_Malloc"), "no probe plan\n{finished}");
        assert!(finished.stdout.contains("[ok ] allocator coverage: full"), "{finished}");
    });
}

#[test]
fn doctor_on_a_non_python_process() {
    let _serial = serial();
    require_root();
    let sleep = KillOnDrop::spawn("sleep", &["60"]);
    let finished = pyleak(["doctor", "--pid", &sleep.pid().to_string()]);
    assert_eq!(finished.status.code(), Some(1), "{finished}");
    assert!(finished.stdout.contains("is not a Python process"), "{finished}");
}

/// Debian's /usr/bin/python3.11 (LTO+PGO, static libpython, stripped): its
/// allocator is inlined, and doctor must say coverage is partial, why, and how
/// to get it full. Skipped, loudly, where that interpreter is absent.
#[test]
fn doctor_reports_partial_coverage_for_an_lto_build() {
    let _serial = serial();
    require_root();
    let debian = std::path::Path::new("/usr/bin/python3.11");
    if !debian.exists() {
        eprintln!(
            "pyleak-e2e: SKIPPED doctor_reports_partial_coverage_for_an_lto_build: no /usr/bin/python3.11"
        );
        return;
    }
    let finished = doctor_of("/usr/bin/python3.11");
    assert!(finished.stdout.contains("allocator coverage: partial"), "{finished}");
    assert!(finished.stdout.contains("PYTHONMALLOC=malloc"), "no remedy given\n{finished}");
    assert!(finished.stdout.contains("linked into the executable"), "{finished}");
}
