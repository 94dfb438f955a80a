// The flamegraph formats of `pyleak run` (issue #4): `--format pprof -o FILE`
// is a profile `go tool pprof` reads, with the leaking function of
// run_leak.py on top and its bytes; `--format svg` is well-formed XML that
// draws that function at the leaking line; `--format folded` has the leaking
// line as its heaviest stack. One interpreter of the matrix (the newest
// installed): the formats render the same report whatever the Python.
//
// `go` (Debian's golang-go, installed by `cargo xtask setup`) must be
// installed: without it the pprof test fails and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use pyleak_e2e::{
    Finished, Python, RUN_TIMEOUT, find_in_path, marker_line, pyleak_command, pythons, require_root,
    run_command, script, script_leak_bounds, serial,
};

const SCRIPT: &str = "run_leak.py";
/// The function of run_leak.py that leaks (its `# LEAK` line).
const LEAK_FUNCTION: &str = "leak";

/// The newest installed interpreter of the matrix.
fn python() -> Python {
    pythons().pop().expect("pythons() panics when none is installed")
}

/// `pyleak run --format FORMAT -o FILE -- PYTHON run_leak.py`; asserts exit 0 and a non-empty
/// FILE, and returns its bytes and the run's output (for failure messages).
fn run_format(python: &Python, format: &str, dir: &Path) -> (Vec<u8>, Finished) {
    let out = dir.join(format!("report.{format}"));
    let mut command = pyleak_command();
    command
        .args(["run", "--format", format, "-o"])
        .arg(&out)
        .arg("--")
        .arg(&python.path)
        .arg(script(SCRIPT))
        .env_remove("PYTHONMALLOC")
        .env_remove("PYTHONTRACEMALLOC")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let finished = run_command(command, RUN_TIMEOUT);
    assert_eq!(finished.status.code(), Some(0), "{python}: want exit 0\n{finished}");
    let bytes = std::fs::read(&out)
        .unwrap_or_else(|e| panic!("{python}: cannot read {}: {e}\n{finished}", out.display()));
    assert!(!bytes.is_empty(), "{python}: {} is empty\n{finished}", out.display());
    (bytes, finished)
}

/// The bounds of the leak's outstanding bytes, from run_leak.py's constants.
fn leak_bytes_bounds() -> (u64, u64) {
    let path = script(SCRIPT);
    script_leak_bounds(&path)
}

/// `run_leak.py:LINE)`: how a frame at the leaking line ends in the folded and SVG formats.
fn leak_line_suffix() -> String {
    format!("{SCRIPT}:{})", marker_line(&script(SCRIPT), "LEAK"))
}

/// The `go` binary; panics, saying how to install it, when there is none.
fn go() -> PathBuf {
    find_in_path("go").unwrap_or_else(|| {
        panic!(
            "`go` is not installed: this test reads pyleak's pprof output with `go tool pprof`; \
             run `cargo xtask setup` (it installs Debian's golang-go)"
        )
    })
}

/// `go tool pprof ARGS... FILE`; asserts exit 0 and returns stdout.
fn go_tool_pprof(args: &[&str], file: &Path) -> String {
    let mut command = Command::new(go());
    // pprof keeps fetched profiles under $PPROF_TMPDIR; keep them out of $HOME.
    let tmp = tempfile::tempdir().expect("tempdir");
    command.args(["tool", "pprof"]).args(args).arg(file).env("PPROF_TMPDIR", tmp.path());
    let finished = run_command(command, RUN_TIMEOUT);
    assert_eq!(finished.status.code(), Some(0), "go tool pprof failed\n{finished}");
    finished.stdout
}

/// `go tool pprof -top -sample_index=inuse_space` names the leaking function first, with the
/// leak's bytes; the sample types are pyleak's four, inuse_space the default.
#[test]
fn pprof_top_is_the_leaking_function() {
    let _serial = serial();
    require_root();
    let go = go(); // before the trace: a missing `go` fails at once
    let python = python();
    let dir = tempfile::tempdir().expect("tempdir");
    let (profile, run) = run_format(&python, "pprof", dir.path());
    assert_eq!(profile[..2], [0x1f, 0x8b], "{python}: the pprof output is not gzipped\n{run}");
    let file = dir.path().join("report.pprof");
    eprintln!("pyleak-e2e: {python}: reading the profile with {}", go.display());

    let top = go_tool_pprof(&["-top", "-sample_index=inuse_space", "-unit=B"], &file);
    let context = format!("{python}\n--- go tool pprof -top:\n{top}\n--- pyleak run:\n{run}");
    let mut rows = top.lines().skip_while(|l| !l.contains("flat%")).skip(1);
    let first = rows.next().unwrap_or_else(|| panic!("no rows in the -top output\n{context}"));
    let columns: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(columns.last(), Some(&LEAK_FUNCTION), "the top function is not the leak\n{context}");
    let flat: u64 = columns[0]
        .strip_suffix('B')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read bytes from {:?}\n{context}", columns[0]));
    let (low, high) = leak_bytes_bounds();
    assert!((low..=high).contains(&flat), "leak bytes {flat} not in {low}..={high}\n{context}");

    let raw = go_tool_pprof(&["-raw"], &file);
    assert!(
        raw.contains("inuse_space/bytes[dflt] inuse_objects/count alloc_space/bytes alloc_objects/count"),
        "{python}: sample types\n--- go tool pprof -raw:\n{raw}"
    );
}

/// Parses `svg` as XML (with its DOCTYPE) and returns the texts of its `<title>` elements, one
/// per drawn frame plus the document's.
fn svg_titles(svg: &str, context: &str) -> Vec<String> {
    let options = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(svg, options)
        .unwrap_or_else(|e| panic!("the SVG is not well-formed XML: {e}\n{context}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg", "{context}");
    doc.descendants()
        .filter(|n| n.tag_name().name() == "title" || n.attribute("id") == Some("title"))
        .filter_map(|n| n.text())
        .map(str::to_string)
        .collect()
}

/// `--format svg`: well-formed XML, titled with pyleak and the pid, with a frame for the
/// leaking function at the leaking line.
#[test]
fn svg_is_xml_showing_the_leaking_function() {
    let _serial = serial();
    require_root();
    let python = python();
    let dir = tempfile::tempdir().expect("tempdir");
    let (svg, run) = run_format(&python, "svg", dir.path());
    let svg = String::from_utf8(svg).expect("the SVG is UTF-8");
    let context = format!("{python}\n--- pyleak run:\n{run}");
    let titles = svg_titles(&svg, &context);
    assert!(titles.iter().any(|t| t.starts_with("pyleak: pid ")), "no pyleak title in {titles:?}\n{context}");
    let frame = format!("{LEAK_FUNCTION} (");
    let suffix = leak_line_suffix();
    assert!(
        titles.iter().any(|t| t.starts_with(&frame) && t.contains(&suffix)),
        "no frame `{frame}...{suffix}` among the SVG's titles {titles:#?}\n{context}"
    );
}

/// `--format folded`: every line is `frames BYTES`; the heaviest ends (innermost frame) at the
/// leaking function and line, with the leak's bytes.
#[test]
fn folded_heaviest_line_is_the_leak() {
    let _serial = serial();
    require_root();
    let python = python();
    let dir = tempfile::tempdir().expect("tempdir");
    let (folded, run) = run_format(&python, "folded", dir.path());
    let folded = String::from_utf8(folded).expect("the folded output is UTF-8");
    let context = format!("{python}\n--- pyleak run:\n{run}\n--- folded:\n{folded}");
    let mut stacks = Vec::new();
    for line in folded.lines() {
        let (frames, bytes) =
            line.rsplit_once(' ').unwrap_or_else(|| panic!("no count on the line {line:?}\n{context}"));
        let bytes: u64 =
            bytes.parse().unwrap_or_else(|_| panic!("bad count on the line {line:?}\n{context}"));
        assert!(bytes > 0, "a line with 0 bytes: {line:?}\n{context}");
        assert!(frames.split(';').all(|f| !f.is_empty()), "an empty frame: {line:?}\n{context}");
        stacks.push((bytes, frames));
    }
    let (bytes, frames) =
        stacks.iter().max_by_key(|(bytes, _)| *bytes).unwrap_or_else(|| panic!("no stacks\n{context}"));
    let innermost = frames.rsplit(';').next().unwrap_or_default();
    assert!(
        innermost.starts_with(&format!("{LEAK_FUNCTION} (")) && innermost.ends_with(&leak_line_suffix()),
        "the heaviest stack's innermost frame is {innermost:?}, not the leak\n{context}"
    );
    let (low, high) = leak_bytes_bounds();
    assert!((low..=high).contains(bytes), "leak bytes {bytes} not in {low}..={high}\n{context}");
}
