//! Flamegraphs of outstanding bytes by Python stack: the `folded`, `svg` and `pprof` report
//! formats of DESIGN.md §4.
//!
//! All three draw a [`Report`] that `report::shape` already filtered, always grouped by whole
//! stack (`--group-by traceback`: a flamegraph *is* the stacks); `report::render` calls them.
//! What each frame is called:
//! - a frame is `qualname (file:line)` (the bare name before Python 3.11), with `;`, control
//!   characters and trailing spaces taken out of the names, so that a name cannot split a
//!   folded line or break the SVG's XML;
//! - a stack cut at the capture depth (`truncated`) gets the root frame `[truncated]`, so its
//!   bytes are not drawn as if `frames.last()` were the program's entry point;
//! - a stack with no Python frame at all gets `<no Python frame> (<native>:0)`, as in the table;
//! - the native caller of a direct C-library allocation (`native_caller`) is the leaf, above
//!   `frames[0]`, as `symbol (library)`: by function, not call site.
//!
//! The formats:
//! - [`folded`]: Brendan Gregg's folded stacks (`flamegraph.pl`, `inferno-flamegraph`,
//!   speedscope): one line per stack, outermost frame first, then a space and the outstanding
//!   bytes. Heaviest first, ties by text; stacks that render alike are merged.
//! - [`svg`]: the interactive SVG of `inferno` (search, zoom), in its memory palette and with
//!   colours hashed from names, so the same report always gives the same file. An empty report
//!   gives a small SVG that says so (inferno refuses empty input).
//! - [`pprof`]: gzipped `profile.proto` (github.com/google/pprof, `proto/profile.proto`) for
//!   `go tool pprof` and the tools that read Go heap profiles. Sample types, in order:
//!   `inuse_space`/bytes (the default), `inuse_objects`/count, `alloc_space`/bytes and
//!   `alloc_objects`/count (allocations since tracing began, freed or not). `alloc_space` and
//!   `alloc_objects` cover only the stacks that still hold memory: `report::shape` drops fully
//!   freed ones, and the profile's comments say so.
//!
//! Each distinct (qualname, file) is a pprof Function (`name` the qualname, `system_name`
//! the bare name, see [`system_name`]; the native caller's `filename` is its library), each
//! (function, line) a Location with one Line (line 0 for the native caller), and
//! each stack a Sample whose locations go leaf first, like `frames`. One Mapping, the
//! interpreter, is marked as symbolized.
//!
//! The protobuf encoder is the few lines of the wire format that `profile.proto` needs
//! ([`Message`]); a code generator would be a larger dependency than the encoding.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use flate2::{Compression, write::GzEncoder};
use inferno::flamegraph::{
    Options,
    color::{BasicPalette, Palette},
};

use crate::model::{Frame, NativeFrame, Report, StackStats};
use crate::report;

/// Root frame of a stack that was cut at the capture depth.
const TRUNCATED: &str = "[truncated]";

/// What the SVG says when no stack holds memory.
const NOTHING_OUTSTANDING: &str = "no outstanding allocations";

/// Brendan Gregg's folded stacks of the outstanding bytes: `outer;...;inner BYTES` per line.
///
/// Stacks with no outstanding bytes are left out. Lines are ordered by bytes (descending),
/// then text, and stacks that render to the same text are summed into one line.
pub fn folded(report: &Report) -> String {
    let mut out = String::new();
    for (stack, bytes) in folded_stacks(report) {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{stack} {bytes}");
    }
    out
}

/// The interactive SVG flamegraph of the outstanding bytes, titled with the pid and command.
pub fn svg(report: &Report) -> Result<Vec<u8>> {
    let stacks = folded_stacks(report);
    let title = title(report);
    if stacks.is_empty() {
        // As the table does: memory the options filtered away is not "nothing outstanding".
        let message = match report.totals.outstanding_bytes {
            0 => NOTHING_OUTSTANDING.to_string(),
            n => format!("{NOTHING_OUTSTANDING} in the selected stacks ({n} bytes outstanding overall)"),
        };
        return Ok(empty_svg(&title, &message));
    }
    let lines: Vec<String> = stacks.iter().map(|(stack, bytes)| format!("{stack} {bytes}")).collect();
    let mut options = Options::default();
    options.title = title;
    options.subtitle = Some(clean(&format!(
        "outstanding bytes by Python stack - Python {}, traced {:.1}s",
        or_unknown(&report.python.version),
        report.duration_s
    )));
    options.count_name = "bytes".to_string();
    options.colors = Palette::Basic(BasicPalette::Mem);
    // Colours from a hash of the name rather than a random generator: same report, same file.
    options.hash = true;
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out)
        .with_context(|| format!("cannot draw the flamegraph of pid {}", report.pid))?;
    Ok(out)
}

/// The report as a gzipped pprof `profile.proto` (see the module docs for the sample types).
pub fn pprof(report: &Report) -> Result<Vec<u8>> {
    let profile = profile(report, SystemTime::now());
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile).context("cannot compress the pprof profile")?;
    gz.finish().context("cannot compress the pprof profile")
}

/// `(folded stack, outstanding bytes)`, heaviest first, then by text; identical texts merged.
fn folded_stacks(report: &Report) -> Vec<(String, u64)> {
    let mut merged: HashMap<String, u64> = HashMap::new();
    for stack in report.stacks.iter().filter(|s| s.outstanding_bytes > 0) {
        let text = drawn_frames(stack).iter().rev().map(Drawn::label).collect::<Vec<_>>().join(";");
        let bytes = merged.entry(text).or_default();
        *bytes = bytes.saturating_add(stack.outstanding_bytes);
    }
    let mut stacks: Vec<(String, u64)> = merged.into_iter().collect();
    stacks.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    stacks
}

/// One frame as the flamegraphs draw it. Names are as the report has them: pprof keeps them
/// so (its file names must match the files on disk); [`Drawn::label`] cleans them for the
/// folded format and the SVG.
#[derive(Debug)]
struct Drawn {
    /// What the frame is called: the qualname (or bare name) of a Python frame, the symbol of
    /// the native caller, or a synthetic name.
    name: String,
    /// The bare name (pprof's `system_name`).
    function: String,
    /// The Python file, or the native caller's library; empty for `[truncated]`.
    file: String,
    /// `None` for the native caller (it is a function, not a line) and for `[truncated]`.
    line: Option<u32>,
}

impl Drawn {
    fn python(frame: &Frame) -> Drawn {
        let name = [&frame.qualname, &frame.function].into_iter().find(|n| !n.is_empty());
        Drawn {
            name: name.map_or("<unknown>", |n| n).to_string(),
            function: frame.function.clone(),
            file: frame.file.clone(),
            line: Some(frame.line),
        }
    }

    fn native(native: &NativeFrame) -> Drawn {
        // By function, not by call site: the offset would split one caller into many frames.
        Drawn {
            name: native.function.clone(),
            function: native.function.clone(),
            file: native.library.clone(),
            line: None,
        }
    }

    fn truncated() -> Drawn {
        Drawn {
            name: TRUNCATED.to_string(),
            function: TRUNCATED.to_string(),
            file: String::new(),
            line: None,
        }
    }

    /// How the folded format and the SVG show it: `qualname (file:line)`, `symbol (library)`
    /// for the native caller, and the bare name for `[truncated]`, each name [`clean`].
    fn label(&self) -> String {
        let (name, file) = (clean(&self.name), clean(&self.file));
        match (&self.line, file.is_empty()) {
            (_, true) => name,
            (Some(line), false) => format!("{name} ({file}:{line})"),
            (None, false) => format!("{name} ({file})"),
        }
    }
}

/// The frames a flamegraph draws for `stack`, innermost first: the native caller of a direct
/// C-library allocation if there is one, the Python frames (or the `<no Python frame>` one if
/// there are none), then `[truncated]` if the stack was cut.
fn drawn_frames(stack: &StackStats) -> Vec<Drawn> {
    let mut drawn: Vec<Drawn> = stack.native_caller.iter().map(Drawn::native).collect();
    if stack.frames.is_empty() {
        drawn.push(Drawn::python(&report::native_frame()));
    }
    drawn.extend(stack.frames.iter().map(Drawn::python));
    if stack.truncated {
        drawn.push(Drawn::truncated());
    }
    drawn
}

/// `s` safe inside a folded frame and in XML: `;` (the frame separator) becomes `:`, as
/// `stackcollapse-perf.pl` does; control characters (newlines: the line separator; the rest:
/// not allowed in XML 1.0) become spaces; trailing spaces go (a folded line's count follows
/// its last space).
fn clean(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    cleaned.trim_end().to_string()
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "unknown" } else { s }
}

/// `pyleak: pid 4242 (python app.py)`.
fn title(report: &Report) -> String {
    let command = clean(&report.command);
    if command.is_empty() {
        format!("pyleak: pid {}", report.pid)
    } else {
        format!("pyleak: pid {} ({command})", report.pid)
    }
}

/// A complete SVG that says there is nothing to draw (inferno refuses empty input).
fn empty_svg(title: &str, message: &str) -> Vec<u8> {
    format!(
        concat!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n",
            "<svg version=\"1.1\" width=\"1200\" height=\"90\" viewBox=\"0 0 1200 90\" ",
            "xmlns=\"http://www.w3.org/2000/svg\">\n",
            "<rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"rgb(238,238,238)\"/>\n",
            "<text x=\"600\" y=\"24\" text-anchor=\"middle\" font-family=\"monospace\" ",
            "font-size=\"17\">{}</text>\n",
            "<text x=\"600\" y=\"60\" text-anchor=\"middle\" font-family=\"monospace\" ",
            "font-size=\"14\">{}</text>\n",
            "</svg>\n"
        ),
        xml_escape(title),
        xml_escape(message)
    )
    .into_bytes()
}

/// Text for an XML element or attribute (`s` is already free of control characters).
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// pprof

/// `Profile` field numbers of pprof's `proto/profile.proto`.
mod field {
    pub const PROFILE_SAMPLE_TYPE: u32 = 1;
    pub const PROFILE_SAMPLE: u32 = 2;
    pub const PROFILE_MAPPING: u32 = 3;
    pub const PROFILE_LOCATION: u32 = 4;
    pub const PROFILE_FUNCTION: u32 = 5;
    pub const PROFILE_STRING_TABLE: u32 = 6;
    pub const PROFILE_TIME_NANOS: u32 = 9;
    pub const PROFILE_DURATION_NANOS: u32 = 10;
    pub const PROFILE_PERIOD_TYPE: u32 = 11;
    pub const PROFILE_PERIOD: u32 = 12;
    pub const PROFILE_COMMENT: u32 = 13;
    pub const PROFILE_DEFAULT_SAMPLE_TYPE: u32 = 14;
    pub const VALUE_TYPE_TYPE: u32 = 1;
    pub const VALUE_TYPE_UNIT: u32 = 2;
    pub const SAMPLE_LOCATION_ID: u32 = 1;
    pub const SAMPLE_VALUE: u32 = 2;
    pub const MAPPING_ID: u32 = 1;
    pub const MAPPING_FILENAME: u32 = 5;
    pub const MAPPING_HAS_FUNCTIONS: u32 = 7;
    pub const MAPPING_HAS_FILENAMES: u32 = 8;
    pub const MAPPING_HAS_LINE_NUMBERS: u32 = 9;
    pub const LOCATION_ID: u32 = 1;
    pub const LOCATION_MAPPING_ID: u32 = 2;
    pub const LOCATION_LINE: u32 = 4;
    pub const LINE_FUNCTION_ID: u32 = 1;
    pub const LINE_LINE: u32 = 2;
    pub const FUNCTION_ID: u32 = 1;
    pub const FUNCTION_NAME: u32 = 2;
    pub const FUNCTION_SYSTEM_NAME: u32 = 3;
    pub const FUNCTION_FILENAME: u32 = 4;
}

/// `(type, unit)` of each sample value, in the order [`sample_values`] fills them.
const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("inuse_space", "bytes"),
    ("inuse_objects", "count"),
    ("alloc_space", "bytes"),
    ("alloc_objects", "count"),
];

/// A sample's values, in [`SAMPLE_TYPES`] order.
fn sample_values(stack: &StackStats) -> [i64; 4] {
    [
        stack.outstanding_bytes,
        stack.outstanding_allocations,
        stack.allocated_bytes,
        stack.allocated_allocations,
    ]
    .map(int64)
}

/// The profile's comment on `alloc_space`/`alloc_objects` (`go tool pprof -comments`).
const ALLOC_SPACE_NOTE: &str = "alloc_space and alloc_objects cover only the stacks that still hold memory";

/// The id of the one Mapping.
const MAPPING_ID: u64 = 1;

/// A Function's `system_name`: the bare name, except that it is left empty when it would
/// repeat a `name` holding `<` or `>` (`<module>`, `<lambda>` before 3.11, `<no Python
/// frame>`). pprof takes a Function whose `system_name` equals its `name` for one still to be
/// demangled and cuts `<...>` out of it as from a C++ template, which would leave `<module>`
/// with no name at all; an empty `system_name` tells it `name` is final.
fn system_name<'a>(name: &str, function: &'a str) -> &'a str {
    if function == name && name.contains(['<', '>']) { "" } else { function }
}

/// A count as pprof's `int64`, saturating.
fn int64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// pprof's string table: index 0 is the empty string, each string is stored once.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        Strings { table: vec![String::new()], index: HashMap::from([(String::new(), 0)]) }
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.index.get(s) {
            return id;
        }
        let id = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), id);
        id
    }
}

/// The uncompressed `Profile` message; `now` is when the trace ended.
fn profile(report: &Report, now: SystemTime) -> Vec<u8> {
    let mut strings = Strings::new();
    let value_type = |strings: &mut Strings, (ty, unit): (&str, &str)| {
        let mut m = Message::default();
        m.int(field::VALUE_TYPE_TYPE, strings.id(ty)).int(field::VALUE_TYPE_UNIT, strings.id(unit));
        m
    };
    let sample_types: Vec<Message> = SAMPLE_TYPES.iter().map(|&t| value_type(&mut strings, t)).collect();
    let period_type = value_type(&mut strings, ("space", "bytes"));
    let default_sample_type = strings.id(SAMPLE_TYPES[0].0);

    // One Mapping, the interpreter, marked as fully symbolized so that pprof does not look for
    // the binary to symbolize it again.
    let mut mapping = Message::default();
    mapping
        .uint(field::MAPPING_ID, MAPPING_ID)
        .int(field::MAPPING_FILENAME, strings.id(&report.python.executable))
        .uint(field::MAPPING_HAS_FUNCTIONS, 1)
        .uint(field::MAPPING_HAS_FILENAMES, 1)
        .uint(field::MAPPING_HAS_LINE_NUMBERS, 1);

    // One Function per distinct (qualname, function, file) — the function follows from the
    // qualname in practice — and one Location per (function, line); ids start at 1.
    let mut function_ids: HashMap<(String, String, String), u64> = HashMap::new();
    let mut functions: Vec<Message> = Vec::new();
    let mut location_ids: HashMap<(u64, u32), u64> = HashMap::new();
    let mut locations: Vec<Message> = Vec::new();
    let mut samples: Vec<Message> = Vec::new();
    for stack in &report.stacks {
        let values = sample_values(stack);
        if values.iter().all(|&v| v == 0) {
            continue;
        }
        let mut ids = Vec::new();
        // pprof wants the leaf first, which is the report's order.
        for frame in drawn_frames(stack) {
            let line = frame.line.unwrap_or(0);
            let key = (frame.name, frame.function, frame.file);
            let function_id = match function_ids.get(&key) {
                Some(&id) => id,
                None => {
                    let id = functions.len() as u64 + 1;
                    let mut m = Message::default();
                    m.uint(field::FUNCTION_ID, id)
                        .int(field::FUNCTION_NAME, strings.id(&key.0))
                        .int(field::FUNCTION_SYSTEM_NAME, strings.id(system_name(&key.0, &key.1)))
                        .int(field::FUNCTION_FILENAME, strings.id(&key.2));
                    functions.push(m);
                    function_ids.insert(key, id);
                    id
                }
            };
            let location_id = *location_ids.entry((function_id, line)).or_insert_with(|| {
                let id = locations.len() as u64 + 1;
                let mut line_entry = Message::default();
                line_entry.uint(field::LINE_FUNCTION_ID, function_id).int(field::LINE_LINE, i64::from(line));
                let mut m = Message::default();
                m.uint(field::LOCATION_ID, id)
                    .uint(field::LOCATION_MAPPING_ID, MAPPING_ID)
                    .message(field::LOCATION_LINE, &line_entry);
                locations.push(m);
                id
            });
            ids.push(location_id);
        }
        let mut sample = Message::default();
        sample.packed(field::SAMPLE_LOCATION_ID, &ids).packed(
            field::SAMPLE_VALUE,
            &values.map(|v| v as u64), // int64 on the wire: two's complement (all are >= 0)
        );
        samples.push(sample);
    }

    let mut comments = vec![
        title(report),
        clean(&format!("Python {}", or_unknown(&report.python.version))),
        ALLOC_SPACE_NOTE.to_string(),
    ];
    comments.extend(report.python.notes.iter().map(|n| clean(n)));
    let comments: Vec<u64> = comments.iter().map(|c| strings.id(c) as u64).collect();

    let duration = Duration::try_from_secs_f64(report.duration_s).unwrap_or_default();
    let start = now.checked_sub(duration).unwrap_or(now);
    let nanos = |d: Duration| int64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let time_nanos = start.duration_since(UNIX_EPOCH).map_or(0, nanos);

    let mut p = Message::default();
    for m in &sample_types {
        p.message(field::PROFILE_SAMPLE_TYPE, m);
    }
    for m in &samples {
        p.message(field::PROFILE_SAMPLE, m);
    }
    p.message(field::PROFILE_MAPPING, &mapping);
    for m in &locations {
        p.message(field::PROFILE_LOCATION, m);
    }
    for m in &functions {
        p.message(field::PROFILE_FUNCTION, m);
    }
    for s in &strings.table {
        p.bytes(field::PROFILE_STRING_TABLE, s.as_bytes());
    }
    p.int(field::PROFILE_TIME_NANOS, time_nanos)
        .int(field::PROFILE_DURATION_NANOS, nanos(duration))
        .message(field::PROFILE_PERIOD_TYPE, &period_type)
        // Bytes between samples: 1 when every allocation is recorded, else --sample-bytes
        // (the values are estimates, scaled up), as Go's heap profiles carry MemProfileRate.
        .int(field::PROFILE_PERIOD, report.sample_bytes.map_or(1, |r| i64::try_from(r).unwrap_or(i64::MAX)))
        .packed(field::PROFILE_COMMENT, &comments)
        .int(field::PROFILE_DEFAULT_SAMPLE_TYPE, default_sample_type);
    p.0
}

/// A protobuf message being encoded: the wire format of
/// <https://protobuf.dev/programming-guides/encoding/>, only what `profile.proto` uses.
/// Scalars equal to 0 are left out, as proto3 encoders do; repeated entries never are.
#[derive(Default)]
struct Message(Vec<u8>);

/// Wire type of varints (`int64`, `uint64`, `bool`).
const WIRE_VARINT: u64 = 0;
/// Wire type of length-delimited fields (`string`, `bytes`, messages, packed repeated).
const WIRE_LEN: u64 = 2;

impl Message {
    fn key(&mut self, field: u32, wire_type: u64) {
        put_varint(&mut self.0, u64::from(field) << 3 | wire_type);
    }

    fn uint(&mut self, field: u32, value: u64) -> &mut Self {
        if value != 0 {
            self.key(field, WIRE_VARINT);
            put_varint(&mut self.0, value);
        }
        self
    }

    /// An `int64`: negative values are their two's complement, ten bytes long.
    fn int(&mut self, field: u32, value: i64) -> &mut Self {
        self.uint(field, value as u64)
    }

    fn bytes(&mut self, field: u32, value: &[u8]) -> &mut Self {
        self.key(field, WIRE_LEN);
        put_varint(&mut self.0, value.len() as u64);
        self.0.extend_from_slice(value);
        self
    }

    fn message(&mut self, field: u32, message: &Message) -> &mut Self {
        self.bytes(field, &message.0)
    }

    /// A packed repeated varint field (nothing at all when `values` is empty).
    fn packed(&mut self, field: u32, values: &[u64]) -> &mut Self {
        if values.is_empty() {
            return self;
        }
        let mut body = Vec::new();
        for &v in values {
            put_varint(&mut body, v);
        }
        self.bytes(field, &body)
    }
}

/// Base-128 varint: seven bits per byte, least significant first, high bit set on all but
/// the last byte.
fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push(value as u8 | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;

    use super::*;
    use crate::model::{PythonInfo, Totals};

    use crate::model::test_frame as frame;

    /// Built through serde, so that fields other features add to `StackStats` (with serde
    /// defaults) need no change here.
    fn stack(outstanding: u64, count: u64, allocated: u64, frames: Vec<Frame>) -> StackStats {
        serde_json::from_value(serde_json::json!({
            "outstanding_bytes": outstanding,
            "outstanding_allocations": count,
            "allocated_bytes": allocated,
            "allocated_allocations": count,
            "frames": frames,
        }))
        .expect("a StackStats")
    }

    fn report(stacks: Vec<StackStats>) -> Report {
        Report {
            pid: 4242,
            command: "python app.py".to_string(),
            python: PythonInfo {
                version: "3.12.1".to_string(),
                executable: "/usr/lib/libpython3.12.so.1.0".to_string(),
                coverage: "full".to_string(),
                notes: vec![],
            },
            duration_s: 12.5,
            totals: Totals::default(),
            stacks,
            sample_bytes: None,
            kernel_programs: None,
        }
    }

    fn handle() -> Frame {
        frame("/srv/app.py", 15, "Service.handle")
    }

    fn main_frame() -> Frame {
        frame("/srv/app.py", 40, "main")
    }

    /// Three stacks sharing `main`, one truncated, one without Python frames, one freed.
    fn sample_report() -> Report {
        let mut cut = stack(64, 1, 64, vec![frame("/srv/db.py", 7, "Db.query")]);
        cut.truncated = true;
        report(vec![
            stack(3000, 3, 9000, vec![handle(), main_frame()]),
            stack(500, 5, 600, vec![frame("/srv/app.py", 20, "Service.cache"), main_frame()]),
            cut,
            stack(100, 2, 100, vec![]),
            stack(0, 0, 777, vec![frame("/srv/freed.py", 1, "gone")]),
        ])
    }

    #[test]
    fn folded_lists_outermost_first_heaviest_first() {
        let text = folded(&sample_report());
        assert_eq!(
            text,
            "main (/srv/app.py:40);Service.handle (/srv/app.py:15) 3000\n\
             main (/srv/app.py:40);Service.cache (/srv/app.py:20) 500\n\
             <no Python frame> (<native>:0) 100\n\
             [truncated];Db.query (/srv/db.py:7) 64\n"
        );
        assert!(!text.contains("freed.py"), "stacks with nothing outstanding are left out");
    }

    #[test]
    fn folded_merges_alike_stacks_and_orders_ties_by_text() {
        let r = report(vec![
            stack(10, 1, 10, vec![frame("/b.py", 1, "b")]),
            stack(10, 1, 10, vec![frame("/a.py", 1, "a")]),
            // Same frames once ';' is replaced: merged with the next one.
            stack(5, 1, 5, vec![frame("/c;d.py", 1, "c")]),
            stack(7, 1, 7, vec![frame("/c:d.py", 1, "c")]),
        ]);
        assert_eq!(folded(&r), "c (/c:d.py:1) 12\na (/a.py:1) 10\nb (/b.py:1) 10\n");
        let mut reversed = r.clone();
        reversed.stacks.reverse();
        assert_eq!(folded(&reversed), folded(&r), "the input order does not matter");
    }

    #[test]
    fn names_are_sanitized() {
        let odd = Frame {
            function: "f".to_string(),
            qualname: "a;b\nc  ".to_string(),
            file: "/x;y\r.py \t".to_string(),
            line: 3,
        };
        assert_eq!(Drawn::python(&odd).label(), "a:b c (/x:y .py:3)");
        let bare = Frame { function: "g".into(), qualname: String::new(), file: "/g.py".into(), line: 1 };
        assert_eq!(Drawn::python(&bare).label(), "g (/g.py:1)");
        let nameless =
            Frame { function: String::new(), qualname: String::new(), file: "/h.py".into(), line: 2 };
        assert_eq!(Drawn::python(&nameless).label(), "<unknown> (/h.py:2)");
        let r = report(vec![stack(1, 1, 1, vec![odd])]);
        let text = folded(&r);
        assert_eq!(text.lines().count(), 1);
        assert_eq!(text.matches(';').count(), 0);
        // pprof has no separators to protect: its names must match the files on disk.
        let d = decode(&pprof(&r).unwrap());
        assert_eq!(d.samples[0].0[0], f("a;b\nc  ", "f", "/x;y\r.py \t", 3));
    }

    #[test]
    fn folded_of_nothing_is_empty() {
        assert_eq!(folded(&report(vec![])), "");
        assert_eq!(folded(&report(vec![stack(0, 0, 100, vec![handle()])])), "");
    }

    /// Parses `svg` as XML and returns its text content.
    fn svg_text(svg: &[u8]) -> String {
        let text = std::str::from_utf8(svg).expect("utf-8");
        // inferno's SVG has a DOCTYPE (SVG 1.1's DTD), which roxmltree refuses unless asked.
        let options = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
        let doc = roxmltree::Document::parse_with_options(text, options)
            .unwrap_or_else(|e| panic!("not XML: {e}\n{text}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        doc.descendants().filter_map(|n| n.text()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn svg_is_xml_that_names_the_functions_and_the_process() {
        let mut r = sample_report();
        r.command = "python <app> & \"co\"".to_string();
        let svg = svg(&r).unwrap();
        let text = svg_text(&svg);
        assert!(text.contains("pyleak: pid 4242 (python <app> & \"co\")"), "{text}");
        assert!(text.contains("Service.handle (/srv/app.py:15)"), "{text}");
        assert!(text.contains("[truncated]"), "{text}");
        assert!(text.contains("bytes"), "{text}");
        assert!(!text.contains("freed.py"));
        assert_eq!(super::svg(&r).unwrap(), svg, "the same report draws the same file");
    }

    #[test]
    fn svg_of_nothing_is_still_an_svg() {
        for r in [report(vec![]), report(vec![stack(0, 0, 5, vec![handle()])])] {
            let text = svg_text(&svg(&r).unwrap());
            assert!(text.contains("no outstanding allocations"), "{text}");
            assert!(!text.contains("selected"), "{text}");
            assert!(text.contains("pyleak: pid 4242 (python app.py)"), "{text}");
        }
        // Outstanding memory that the report options filtered away is not hidden.
        let mut filtered = report(vec![]);
        filtered.totals.outstanding_bytes = 1234;
        let text = svg_text(&svg(&filtered).unwrap());
        assert!(
            text.contains(
                "no outstanding allocations in the selected stacks (1234 bytes outstanding overall)"
            ),
            "{text}"
        );
        let mut odd = report(vec![]);
        odd.command = "a<b>&'\"\u{1}\n".to_string();
        let text = svg_text(&svg(&odd).unwrap());
        assert!(text.contains("pyleak: pid 4242 (a<b>&'\")"), "{text}");
    }

    #[test]
    fn varints_and_fields_match_the_protobuf_docs() {
        let varint = |v| {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            b
        };
        assert_eq!(varint(0), [0]);
        assert_eq!(varint(1), [1]);
        assert_eq!(varint(127), [0x7f]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(150), [0x96, 0x01]);
        assert_eq!(varint(300), [0xac, 0x02]);
        assert_eq!(varint(u64::MAX), [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        // protobuf.dev's examples: `1: 150`, `2: "testing"`, packed `4: [3, 270, 86942]`.
        let mut m = Message::default();
        m.uint(1, 150);
        assert_eq!(m.0, [0x08, 0x96, 0x01]);
        let mut m = Message::default();
        m.bytes(2, b"testing");
        assert_eq!(m.0, b"\x12\x07testing");
        let mut m = Message::default();
        m.packed(4, &[3, 270, 86942]);
        assert_eq!(m.0, [0x22, 0x06, 0x03, 0x8e, 0x02, 0x9e, 0xa7, 0x05]);
        // Defaults are left out; empty strings in a repeated field are not; -1 is ten bytes.
        let mut m = Message::default();
        m.uint(1, 0).int(2, 0).packed(3, &[]).bytes(6, b"");
        assert_eq!(m.0, [0x32, 0x00]);
        let mut m = Message::default();
        m.int(1, -1);
        assert_eq!(m.0.len(), 11);
        let mut outer = Message::default();
        outer.message(3, &Message(vec![0x08, 0x01]));
        assert_eq!(outer.0, [0x1a, 0x02, 0x08, 0x01]);
    }

    // --- A minimal protobuf decoder for the tests: fields as (number, value) pairs.

    #[derive(Debug)]
    enum Value {
        Varint(u64),
        Bytes(Vec<u8>),
    }

    fn read_varint(buf: &[u8], at: &mut usize) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = buf[*at];
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
        }
        panic!("varint longer than 10 bytes");
    }

    fn fields(buf: &[u8]) -> Vec<(u32, Value)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let key = read_varint(buf, &mut at);
            let value = match key & 7 {
                0 => Value::Varint(read_varint(buf, &mut at)),
                2 => {
                    let len = read_varint(buf, &mut at) as usize;
                    at += len;
                    Value::Bytes(buf[at - len..at].to_vec())
                }
                other => panic!("unexpected wire type {other}"),
            };
            out.push(((key >> 3) as u32, value));
        }
        out
    }

    fn varint_of(v: &Value) -> u64 {
        match v {
            Value::Varint(v) => *v,
            Value::Bytes(b) => panic!("want a varint, got bytes {b:?}"),
        }
    }

    fn bytes_of(v: &Value) -> &[u8] {
        match v {
            Value::Bytes(b) => b,
            Value::Varint(v) => panic!("want bytes, got varint {v}"),
        }
    }

    /// A repeated varint field, packed or not.
    fn varints(fs: &[(u32, Value)], number: u32) -> Vec<u64> {
        let mut out = Vec::new();
        for (_, v) in fs.iter().filter(|(n, _)| *n == number) {
            match v {
                Value::Varint(x) => out.push(*x),
                Value::Bytes(b) => {
                    let mut at = 0;
                    while at < b.len() {
                        out.push(read_varint(b, &mut at));
                    }
                }
            }
        }
        out
    }

    fn scalar(fs: &[(u32, Value)], number: u32) -> u64 {
        fs.iter().rev().find(|(n, _)| *n == number).map_or(0, |(_, v)| varint_of(v))
    }

    fn messages(fs: &[(u32, Value)], number: u32) -> Vec<Vec<(u32, Value)>> {
        fs.iter().filter(|(n, _)| *n == number).map(|(_, v)| fields(bytes_of(v))).collect()
    }

    /// The profile, decoded into what the tests check.
    /// A decoded Location: (function name, system name, file, line).
    type DecodedFrame = (String, String, String, i64);

    #[derive(Debug)]
    struct Decoded {
        strings: Vec<String>,
        sample_types: Vec<(String, String)>,
        /// Per sample: its frames (leaf first) and its values.
        samples: Vec<(Vec<DecodedFrame>, Vec<i64>)>,
        functions: usize,
        locations: usize,
        mapping_file: String,
        period_type: (String, String),
        period: u64,
        default_sample_type: String,
        time_nanos: u64,
        duration_nanos: u64,
        comments: Vec<String>,
    }

    fn decode(gzipped: &[u8]) -> Decoded {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gzipped).read_to_end(&mut raw).expect("gzip");
        let p = fields(&raw);
        let strings: Vec<String> = p
            .iter()
            .filter(|(n, _)| *n == 6)
            .map(|(_, v)| String::from_utf8(bytes_of(v).to_vec()).unwrap())
            .collect();
        assert_eq!(strings[0], "", "string_table[0] must be the empty string");
        let s = |i: u64| strings[i as usize].clone();
        let value_type = |m: &[(u32, Value)]| (s(scalar(m, 1)), s(scalar(m, 2)));
        let mut functions = BTreeMap::new();
        for f in messages(&p, 5) {
            assert_eq!(scalar(&f, 5), 0, "start_line");
            functions.insert(scalar(&f, 1), (s(scalar(&f, 2)), s(scalar(&f, 3)), s(scalar(&f, 4))));
        }
        let mut locations = BTreeMap::new();
        for l in messages(&p, 4) {
            let lines = messages(&l, 4);
            assert_eq!(lines.len(), 1, "one Line per Location");
            assert_eq!(scalar(&l, 2), 1, "every Location is in the one Mapping");
            let (name, system, file) = functions[&scalar(&lines[0], 1)].clone();
            locations.insert(scalar(&l, 1), (name, system, file, scalar(&lines[0], 2) as i64));
        }
        let samples = messages(&p, 2)
            .iter()
            .map(|m| {
                let frames = varints(m, 1).iter().map(|id| locations[id].clone()).collect();
                (frames, varints(m, 2).into_iter().map(|v| v as i64).collect())
            })
            .collect();
        let mappings = messages(&p, 3);
        assert_eq!(mappings.len(), 1);
        let m = &mappings[0];
        assert_eq!((scalar(m, 1), scalar(m, 7), scalar(m, 8), scalar(m, 9)), (1, 1, 1, 1), "id, has_*");
        Decoded {
            mapping_file: s(scalar(m, 5)),
            sample_types: messages(&p, 1).iter().map(|m| value_type(m)).collect(),
            samples,
            functions: functions.len(),
            locations: locations.len(),
            period_type: value_type(&messages(&p, 11)[0]),
            period: scalar(&p, 12),
            default_sample_type: s(scalar(&p, 14)),
            time_nanos: scalar(&p, 9),
            duration_nanos: scalar(&p, 10),
            comments: varints(&p, 13).into_iter().map(s).collect(),
            strings,
        }
    }

    fn f(name: &str, system: &str, file: &str, line: i64) -> DecodedFrame {
        (name.to_string(), system.to_string(), file.to_string(), line)
    }

    #[test]
    fn pprof_decodes_to_the_report() {
        let r = sample_report();
        let d = decode(&pprof(&r).unwrap());
        let types: Vec<(&str, &str)> = d.sample_types.iter().map(|(t, u)| (t.as_str(), u.as_str())).collect();
        assert_eq!(
            types,
            [
                ("inuse_space", "bytes"),
                ("inuse_objects", "count"),
                ("alloc_space", "bytes"),
                ("alloc_objects", "count")
            ]
        );
        assert_eq!(d.default_sample_type, "inuse_space");
        assert_eq!(d.period_type, ("space".to_string(), "bytes".to_string()));
        assert_eq!(d.period, 1);
        let sampled = Report { sample_bytes: Some(524_288), ..sample_report() };
        assert_eq!(decode(&pprof(&sampled).unwrap()).period, 524_288);
        assert_eq!(d.mapping_file, "/usr/lib/libpython3.12.so.1.0");
        assert_eq!(d.duration_nanos, 12_500_000_000);
        assert!(d.time_nanos > 1_600_000_000 * 1_000_000_000, "time_nanos is a recent wall time");

        let main = f("main", "main", "/srv/app.py", 40);
        assert_eq!(d.samples.len(), 5, "every stack with a non-zero value: {:?}", d.samples);
        assert_eq!(
            d.samples[0],
            (vec![f("Service.handle", "handle", "/srv/app.py", 15), main.clone()], vec![3000, 3, 9000, 3])
        );
        assert_eq!(
            d.samples[1],
            (vec![f("Service.cache", "cache", "/srv/app.py", 20), main.clone()], vec![500, 5, 600, 5])
        );
        assert_eq!(
            d.samples[2],
            (
                vec![f("Db.query", "query", "/srv/db.py", 7), f("[truncated]", "[truncated]", "", 0)],
                vec![64, 1, 64, 1]
            )
        );
        assert_eq!(d.samples[3], (vec![f("<no Python frame>", "", "<native>", 0)], vec![100, 2, 100, 2]));
        assert_eq!(d.samples[4], (vec![f("gone", "gone", "/srv/freed.py", 1)], vec![0, 0, 777, 0]));
        // `main` is one Function and one Location, shared by two samples.
        assert_eq!((d.functions, d.locations), (7, 7));
        for s in ["Service.handle", "handle", "/srv/app.py", "main", "[truncated]"] {
            assert_eq!(d.strings.iter().filter(|t| *t == s).count(), 1, "{s:?} once in {:?}", d.strings);
        }
        assert!(d.comments.contains(&"pyleak: pid 4242 (python app.py)".to_string()), "{:?}", d.comments);
        assert!(d.comments.iter().any(|c| c.starts_with("alloc_space and alloc_objects cover only")));
    }

    fn native(function: &str, offset: u64) -> NativeFrame {
        NativeFrame {
            function: function.to_string(),
            library: "/usr/lib/x86_64-linux-gnu/libffi.so.8".to_string(),
            offset,
        }
    }

    #[test]
    fn the_native_caller_is_the_leaf_by_function() {
        let run = frame("/srv/ffi.py", 9, "run");
        let mut a = stack(100, 1, 100, vec![run.clone()]);
        a.native_caller = Some(native("ffi_call_unix64", 0x4c));
        let mut b = stack(50, 1, 50, vec![run.clone()]);
        b.native_caller = Some(native("ffi_call_unix64", 0x80));
        let mut c = stack(7, 1, 7, vec![]);
        c.native_caller = Some(native("0x1a2b", 0));
        let r = report(vec![a, b, c]);
        // Two call sites in one function are one frame.
        assert_eq!(
            folded(&r),
            "run (/srv/ffi.py:9);ffi_call_unix64 (/usr/lib/x86_64-linux-gnu/libffi.so.8) 150\n\
             <no Python frame> (<native>:0);0x1a2b (/usr/lib/x86_64-linux-gnu/libffi.so.8) 7\n"
        );
        let d = decode(&pprof(&r).unwrap());
        let ffi = f("ffi_call_unix64", "", "/usr/lib/x86_64-linux-gnu/libffi.so.8", 0);
        let ffi = (ffi.0, "ffi_call_unix64".to_string(), ffi.2, ffi.3);
        assert_eq!(d.samples[0].0, [ffi.clone(), f("run", "run", "/srv/ffi.py", 9)]);
        assert_eq!(d.samples[1].0, [ffi, f("run", "run", "/srv/ffi.py", 9)]);
        assert_eq!(d.locations, 4, "ffi_call_unix64, run, 0x1a2b, <no Python frame>");
    }

    #[test]
    fn pprof_lines_differ_share_the_function() {
        let r = report(vec![
            stack(10, 1, 10, vec![frame("/a.py", 1, "C.f")]),
            stack(20, 1, 20, vec![frame("/a.py", 2, "C.f")]),
            stack(30, 1, 30, vec![frame("/b.py", 2, "C.f")]),
        ]);
        let d = decode(&pprof(&r).unwrap());
        assert_eq!((d.functions, d.locations), (2, 3));
    }

    #[test]
    fn pprof_system_names_never_make_pprof_drop_a_name() {
        assert_eq!(system_name("Service.handle", "handle"), "handle");
        assert_eq!(system_name("leak", "leak"), "leak");
        assert_eq!(system_name("[truncated]", "[truncated]"), "[truncated]");
        assert_eq!(system_name("f.<locals>.<lambda>", "<lambda>"), "<lambda>");
        assert_eq!(system_name("<module>", "<module>"), "");
        let r = report(vec![stack(8, 1, 8, vec![frame("/m.py", 3, "<module>")])]);
        let d = decode(&pprof(&r).unwrap());
        assert_eq!(d.samples[0].0, [f("<module>", "", "/m.py", 3)]);
    }

    #[test]
    fn pprof_of_nothing_is_a_valid_profile() {
        let mut r = report(vec![]);
        r.duration_s = 0.0;
        r.command.clear();
        let d = decode(&pprof(&r).unwrap());
        assert!(d.samples.is_empty());
        assert_eq!(d.sample_types.len(), 4);
        assert_eq!(d.default_sample_type, "inuse_space");
        assert_eq!(d.duration_nanos, 0);
        assert!(d.comments.contains(&"pyleak: pid 4242".to_string()));
        // A duration no Duration can hold does not panic.
        r.duration_s = f64::NAN;
        decode(&pprof(&r).unwrap());
        r.duration_s = 1e30;
        decode(&pprof(&r).unwrap());
    }

    #[test]
    fn pprof_values_saturate() {
        let r = report(vec![stack(u64::MAX, 1, u64::MAX, vec![handle()])]);
        let d = decode(&pprof(&r).unwrap());
        assert_eq!(d.samples[0].1, [i64::MAX, 1, i64::MAX, 1]);
    }
}
