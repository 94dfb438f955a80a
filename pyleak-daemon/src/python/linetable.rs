//! Bytecode position to source line, for CPython 3.8 through 3.14.
//!
//! The eBPF side records a code object address and a bytecode position per frame; userspace
//! reads the code object's line table and `co_firstlineno` from `/proc/<pid>/mem` and asks this
//! module which source line that position belongs to. This module owns only the decoding: it
//! does no remote reads, no version detection (the caller maps the interpreter version to a
//! [`LineTableFormat`]) and no caching.
//!
//! | CPython | Table | Byte offset passed in | CPython's own decoder |
//! |---|---|---|---|
//! | 3.8, 3.9 | `co_lnotab` | `f_lasti` | `PyCode_Addr2Line` |
//! | 3.10 | `co_linetable` | `f_lasti * 2` | `_PyCode_CheckLineNumber` + `advance` |
//! | 3.11–3.14 | `co_linetable` (locations) | instruction pointer − `co_code_adaptive` | `_PyCode_CheckLineNumber` + `advance` |
//!
//! All three live in `Objects/codeobject.c` of the matching release. The layouts are described
//! in `Objects/lnotab_notes.txt` (3.8–3.10; the 3.10 table is PEP 626's) and `locations.md`
//! (3.11+, PEP 657; `Objects/` in 3.11, `InternalDocs/` in newer trees). The tests compare every
//! code unit of real code objects with the interpreter's own `PyCode_Addr2Line`, `co_lines()`,
//! `co_positions()` and `dis.findlinestarts()` on each installed 3.8–3.14 build; 3.14 uses the
//! 3.11 format unchanged but had no build here to check against.
//!
//! The tables come from another process's memory and may be torn or garbage. The decoders
//! never panic, never read past the slice, run at most one step per table byte, and answer
//! `None` for anything they cannot decode.

// Nothing calls the decoders yet; the symbolizer will.
#![allow(dead_code)]

/// Which line-table encoding a code object uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LineTableFormat {
    /// 3.8–3.9 `co_lnotab`: pairs (bytecode byte delta u8, line delta i8 in 3.8+/3.9).
    Lnotab,
    /// 3.10 `co_linetable`: pairs (byte delta u8, line delta i8; -128 = no line).
    Linetable310,
    /// 3.11+ location table (`co_linetable`, PEP 626/657 "locations" format).
    Locations,
}

/// Line executed at `byte_offset` (offset in BYTES from the start of the bytecode: for 3.8/3.9
/// that is f_lasti, for 3.10 it is f_lasti*2, for 3.11+ it is the instruction pointer minus the
/// start of co_code_adaptive), given the code object's line table bytes and co_firstlineno.
/// Returns None when the table says the instruction has no line (or the offset is past the
/// table).
///
/// Per format:
/// - [`LineTableFormat::Lnotab`]: a `co_lnotab` has no end marker and no "no line" value, so,
///   like 3.8/3.9 `PyCode_Addr2Line`, an offset past the last entry gets the last line and an
///   empty table gives `first_line` everywhere.
/// - [`LineTableFormat::Linetable310`] and [`LineTableFormat::Locations`]: the table covers the
///   bytecode exactly, so an offset at or past its end is `None`, as is an offset inside a
///   no-line entry.
///
/// Also `None`: an odd-length 3.8–3.10 table, a location table that does not start with an
/// entry header or whose line delta varint is truncated or longer than 36 bits, and a line that
/// would be negative or above `u32::MAX`.
pub fn line_for_offset(
    format: LineTableFormat,
    table: &[u8],
    first_line: u32,
    byte_offset: u32,
) -> Option<u32> {
    match format {
        LineTableFormat::Lnotab => lnotab_line(table, first_line, byte_offset),
        LineTableFormat::Linetable310 => linetable310_line(table, first_line, byte_offset),
        LineTableFormat::Locations => locations_line(table, first_line, byte_offset),
    }
}

/// Lines are `int` in CPython and can in principle go negative through deltas; a negative or
/// oversized line is not something we can report.
fn to_line(line: i64) -> Option<u32> {
    u32::try_from(line).ok()
}

/// 3.8/3.9 `PyCode_Addr2Line`:
///
/// ```c
/// while (--size >= 0) {
///     addr += *p++;
///     if (addr > addrq) break;
///     line += (signed char)*p;
///     p++;
/// }
/// ```
///
/// Line deltas have been signed since 3.6 (bpo-26107). The compiler splits big deltas into
/// several pairs, `(255, 0)` for bytes and `(0, 127)` / `(0, -128)` for lines, which the plain
/// accumulation handles.
fn lnotab_line(table: &[u8], first_line: u32, byte_offset: u32) -> Option<u32> {
    // CPython would ignore a trailing odd byte, but its compiler never writes one: treat it as
    // a torn read.
    let (pairs, []) = table.as_chunks::<2>() else {
        return None;
    };
    let offset = u64::from(byte_offset);
    let mut addr: u64 = 0;
    let mut line = i64::from(first_line);
    for &[byte_delta, line_delta] in pairs {
        addr += u64::from(byte_delta);
        if addr > offset {
            break;
        }
        line += i64::from(line_delta as i8);
    }
    to_line(line)
}

/// The 3.10 "no line" marker in the line-delta byte (`Objects/lnotab_notes.txt`).
const LINETABLE310_NO_LINE: i8 = -128;

/// 3.10 `_PyCode_CheckLineNumber` walking forward with `advance`: entry k covers bytes
/// `[end_{k-1}, end_{k-1} + byte_delta_k)`; its line is the running sum of line deltas unless
/// its delta is -128, which means "no line" and leaves the running sum alone. Zero-length
/// entries (the compiler's `(0, ±127)` continuation pairs) cover nothing but still add their
/// delta. The byte deltas count bytes even though 3.10's `f_lasti` counts code units, hence
/// the caller's `f_lasti * 2`.
fn linetable310_line(table: &[u8], first_line: u32, byte_offset: u32) -> Option<u32> {
    let (pairs, []) = table.as_chunks::<2>() else {
        return None;
    };
    let offset = u64::from(byte_offset);
    let mut end: u64 = 0;
    let mut line = i64::from(first_line);
    for &[byte_delta, line_delta] in pairs {
        let line_delta = line_delta as i8;
        let has_line = line_delta != LINETABLE310_NO_LINE;
        if has_line {
            line += i64::from(line_delta);
        }
        end += u64::from(byte_delta);
        // Entries are contiguous from 0, so the first entry ending past the offset contains it.
        if offset < end {
            return if has_line { to_line(line) } else { None };
        }
    }
    None
}

/// `_PyCodeLocationInfoKind` (`Include/cpython/code.h`): the kind is bits 3–6 of an entry's
/// first byte.
const KIND_ONE_LINE0: u8 = 10;
const KIND_ONE_LINE2: u8 = 12;
const KIND_NO_COLUMNS: u8 = 13;
const KIND_LONG: u8 = 14;
const KIND_NONE: u8 = 15;

/// A location-table varint has 6 payload bits per byte; CPython decodes into an `unsigned int`.
/// Six chunks (36 bits) cover every value CPython can write; more is garbage.
const VARINT_MAX_CHUNKS: u32 = 6;

/// The parts of one 3.11+ location entry that matter for line numbers.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct LocationEntry {
    /// `_PyCodeLocationInfoKind`, 0–15.
    kind: u8,
    /// Code units (2 bytes each, inline caches included) the entry covers, 1–8.
    code_units: u8,
    /// Start-line delta from the previous entry's start line (0 for [`KIND_NONE`]).
    line_delta: i64,
}

impl LocationEntry {
    fn has_line(self) -> bool {
        self.kind != KIND_NONE
    }
}

/// Why a location table could not be decoded.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct MalformedLocations;

/// Iterator over the entries of a 3.11+ location table. Yields one `Err` and then stops at the
/// first entry it cannot decode.
struct LocationEntries<'a> {
    table: &'a [u8],
    pos: usize,
}

impl<'a> LocationEntries<'a> {
    fn new(table: &'a [u8]) -> Self {
        LocationEntries { table, pos: 0 }
    }
}

impl Iterator for LocationEntries<'_> {
    type Item = Result<LocationEntry, MalformedLocations>;

    /// Mirrors 3.11+ `advance`: the line delta comes from `get_line_delta`, the length from the
    /// low 3 bits (`next_code_delta`), and the next entry starts at the next byte with bit 7
    /// set (payload bytes never have it). Column bytes are skipped unread, as CPython does.
    fn next(&mut self) -> Option<Self::Item> {
        let start = self.pos;
        let rest = self.table.get(start..)?;
        let (&head, after_head) = rest.split_first()?;
        // Stop after this item whatever it is: on error the iterator is exhausted.
        self.pos = self.table.len();
        if head & 0x80 == 0 {
            // Only possible for the first byte; CPython asserts here.
            return Some(Err(MalformedLocations));
        }
        let payload_len = after_head.iter().take_while(|&&b| b & 0x80 == 0).count();
        let Some(payload) = after_head.get(..payload_len) else {
            return Some(Err(MalformedLocations));
        };
        let kind = (head >> 3) & 0x0f;
        let line_delta = match kind {
            KIND_NO_COLUMNS | KIND_LONG => match read_svarint(payload) {
                Some(delta) => delta,
                None => return Some(Err(MalformedLocations)),
            },
            KIND_ONE_LINE0..=KIND_ONE_LINE2 => i64::from(kind - KIND_ONE_LINE0),
            // Short forms 0–9 stay on the line; KIND_NONE leaves the running line alone.
            _ => 0,
        };
        self.pos = start.saturating_add(1).saturating_add(payload_len);
        Some(Ok(LocationEntry { kind, code_units: (head & 0x07) + 1, line_delta }))
    }
}

/// CPython's `scan_varint`: 6-bit chunks, least significant first, bit 6 (0x40) set on every
/// chunk but the last. `None` if the bytes run out first or the value exceeds 36 bits.
fn read_varint(bytes: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for (chunk, &b) in (0..VARINT_MAX_CHUNKS).zip(bytes) {
        value |= u64::from(b & 0x3f) << (6 * chunk);
        if b & 0x40 == 0 {
            return Some(value);
        }
    }
    None
}

/// CPython's `scan_signed_varint`: a varint whose bit 0 is the sign and the rest the magnitude.
fn read_svarint(bytes: &[u8]) -> Option<i64> {
    let raw = read_varint(bytes)?;
    // raw < 2^36, so the magnitude always fits an i64.
    let magnitude = i64::try_from(raw >> 1).ok()?;
    Some(if raw & 1 != 0 { -magnitude } else { magnitude })
}

/// 3.11+ `_PyCode_CheckLineNumber` walking forward with `advance`: entries are contiguous from
/// byte 0; each adds its line delta to the running line (starting at `co_firstlineno`) and
/// covers `code_units * 2` bytes; a [`KIND_NONE`] entry has no line.
fn locations_line(table: &[u8], first_line: u32, byte_offset: u32) -> Option<u32> {
    let offset = u64::from(byte_offset);
    let mut end: u64 = 0;
    let mut line = i64::from(first_line);
    for entry in LocationEntries::new(table) {
        let entry = entry.ok()?;
        line = line.checked_add(entry.line_delta)?;
        end += u64::from(entry.code_units) * 2;
        if offset < end {
            return if entry.has_line() { to_line(line) } else { None };
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use LineTableFormat::{Linetable310, Lnotab, Locations};

    /// `line_for_offset` for every offset in `range`, for compact assertions.
    fn lines(
        format: LineTableFormat,
        table: &[u8],
        first: u32,
        range: std::ops::Range<u32>,
    ) -> Vec<Option<u32>> {
        range.map(|off| line_for_offset(format, table, first, off)).collect()
    }

    /// `n` copies of `line`.
    fn rep(line: Option<u32>, n: usize) -> Vec<Option<u32>> {
        vec![line; n]
    }

    fn concat(parts: &[Vec<Option<u32>>]) -> Vec<Option<u32>> {
        parts.concat()
    }

    // ---- 3.8 / 3.9 co_lnotab ----

    #[test]
    fn lnotab_entries_and_negative_deltas() {
        // Bytes [0,6) line 10, [6,14) line 11, [14,18) line 13, then -1: line 12 from 18 on.
        let table = [6, 1, 8, 2, 4, 0xff];
        assert_eq!(
            lines(Lnotab, &table, 10, 0..24),
            concat(&[rep(Some(10), 6), rep(Some(11), 8), rep(Some(13), 4), rep(Some(12), 6)])
        );
    }

    #[test]
    fn lnotab_past_the_end_keeps_last_line() {
        // PyCode_Addr2Line has no end: everything after the last pair is on the last line.
        let table = [4, 3];
        assert_eq!(line_for_offset(Lnotab, &table, 7, 3), Some(7));
        assert_eq!(line_for_offset(Lnotab, &table, 7, 4), Some(10));
        assert_eq!(line_for_offset(Lnotab, &table, 7, 1_000_000), Some(10));
        assert_eq!(line_for_offset(Lnotab, &table, 7, u32::MAX), Some(10));
    }

    #[test]
    fn lnotab_empty_table_is_first_line() {
        assert_eq!(line_for_offset(Lnotab, &[], 42, 0), Some(42));
        assert_eq!(line_for_offset(Lnotab, &[], 42, 200), Some(42));
    }

    #[test]
    fn lnotab_split_deltas() {
        // What the 3.8 compiler writes for "+300 bytes, +300 lines":
        // (255, 0) (45, 127) (0, 127) (0, 46).
        let table = [255, 0, 45, 127, 0, 127, 0, 46];
        assert_eq!(line_for_offset(Lnotab, &table, 1, 0), Some(1));
        assert_eq!(line_for_offset(Lnotab, &table, 1, 299), Some(1));
        assert_eq!(line_for_offset(Lnotab, &table, 1, 300), Some(301));
        // And "-200 lines" as (2, -128) (0, -72).
        let table = [2, 0x80, 0, (-72i8) as u8];
        assert_eq!(line_for_offset(Lnotab, &table, 500, 1), Some(500));
        assert_eq!(line_for_offset(Lnotab, &table, 500, 2), Some(300));
    }

    #[test]
    fn lnotab_malformed() {
        // Odd length: torn read.
        assert_eq!(line_for_offset(Lnotab, &[2], 5, 0), None);
        assert_eq!(line_for_offset(Lnotab, &[2, 1, 3], 5, 4), None);
        // Line would go below zero.
        assert_eq!(line_for_offset(Lnotab, &[2, 0xfb], 1, 2), None);
        assert_eq!(line_for_offset(Lnotab, &[2, 0xfb], 1, 1), Some(1));
        // Line would exceed u32.
        assert_eq!(line_for_offset(Lnotab, &[0, 1], u32::MAX, 0), None);
    }

    // ---- 3.10 co_linetable ----

    #[test]
    fn linetable310_ranges_no_line_and_negative_deltas() {
        // [0,6) line 5, [6,10) line 6, [10,12) no line, [12,20) line 4 (6 - 2), then the end.
        let table = [6, 0, 4, 1, 2, 0x80, 8, 0xfe];
        assert_eq!(
            lines(Linetable310, &table, 5, 0..24),
            concat(&[rep(Some(5), 6), rep(Some(6), 4), rep(None, 2), rep(Some(4), 8), rep(None, 4)])
        );
        assert_eq!(line_for_offset(Linetable310, &table, 5, u32::MAX), None);
    }

    #[test]
    fn linetable310_zero_length_entries_add_their_delta() {
        // The 3.10 compiler writes +300 lines over 4 bytes as (0, 127) (0, 127) (4, 46).
        let table = [2, 0, 0, 127, 0, 127, 4, 46];
        assert_eq!(
            lines(Linetable310, &table, 1, 0..7),
            concat(&[rep(Some(1), 2), rep(Some(301), 4), rep(None, 1)])
        );
    }

    #[test]
    fn linetable310_long_ranges() {
        // 600 bytes on one line: (254, 1) (254, 0) (92, 0); a 300-byte no-line stretch:
        // (254, -128) (46, -128).
        let table = [254, 1, 254, 0, 92, 0, 254, 0x80, 46, 0x80, 2, 3];
        assert_eq!(line_for_offset(Linetable310, &table, 9, 0), Some(10));
        assert_eq!(line_for_offset(Linetable310, &table, 9, 254), Some(10));
        assert_eq!(line_for_offset(Linetable310, &table, 9, 599), Some(10));
        assert_eq!(line_for_offset(Linetable310, &table, 9, 600), None);
        assert_eq!(line_for_offset(Linetable310, &table, 9, 899), None);
        // The no-line entries did not disturb the running line.
        assert_eq!(line_for_offset(Linetable310, &table, 9, 900), Some(13));
        assert_eq!(line_for_offset(Linetable310, &table, 9, 902), None);
    }

    #[test]
    fn linetable310_malformed() {
        assert_eq!(line_for_offset(Linetable310, &[], 1, 0), None);
        assert_eq!(line_for_offset(Linetable310, &[4], 1, 0), None);
        assert_eq!(line_for_offset(Linetable310, &[4, 0, 2], 1, 0), None);
        assert_eq!(line_for_offset(Linetable310, &[4, 0xf0], 3, 0), None);
        // Only zero-length entries: covers nothing.
        assert_eq!(line_for_offset(Linetable310, &[0, 1, 0, 1], 3, 0), None);
    }

    // ---- 3.11+ location table ----

    /// Encoders for building location tables by hand, following CPython's
    /// `write_location_info_entry` and friends (`Python/compile.c` in 3.11, `Python/assemble.c`
    /// from 3.12).
    fn header(kind: u8, units: u8) -> u8 {
        assert!(kind < 16 && (1..=8).contains(&units));
        0x80 | (kind << 3) | (units - 1)
    }

    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while v >= 64 {
            out.push(0x40 | (v & 0x3f) as u8);
            v >>= 6;
        }
        out.push(v as u8);
        out
    }

    fn svarint(v: i64) -> Vec<u8> {
        if v < 0 { varint((v.unsigned_abs() << 1) | 1) } else { varint((v as u64) << 1) }
    }

    fn short(units: u8, col: u8, end_col: u8) -> Vec<u8> {
        vec![header(col / 8, units), ((col % 8) << 4) | (end_col - col)]
    }

    fn one_line(units: u8, line_delta: u8, col: u8, end_col: u8) -> Vec<u8> {
        vec![header(KIND_ONE_LINE0 + line_delta, units), col, end_col]
    }

    fn no_columns(units: u8, line_delta: i64) -> Vec<u8> {
        let mut e = vec![header(KIND_NO_COLUMNS, units)];
        e.extend(svarint(line_delta));
        e
    }

    fn long(units: u8, line_delta: i64, end_line_delta: u64, col: u64, end_col: u64) -> Vec<u8> {
        let mut e = vec![header(KIND_LONG, units)];
        e.extend(svarint(line_delta));
        e.extend(varint(end_line_delta));
        e.extend(varint(col + 1));
        e.extend(varint(end_col + 1));
        e
    }

    fn no_location(units: u8) -> Vec<u8> {
        vec![header(KIND_NONE, units)]
    }

    #[test]
    fn varint_encoding_matches_locations_md() {
        // The examples in InternalDocs/locations.md, and hand-computed multi-chunk values.
        assert_eq!(varint(63), [0x3f]);
        assert_eq!(varint(200), [0x48, 0x03]);
        assert_eq!(read_varint(&[0x3f]), Some(63));
        assert_eq!(read_varint(&[0x48, 0x03]), Some(200));
        // 10000 = 2·4096 + 28·64 + 16.
        assert_eq!(read_varint(&[0x50, 0x5c, 0x02]), Some(10_000));
        assert_eq!(read_svarint(&[0x50, 0x5c, 0x02]), Some(5_000));
        // 141 = 2·64 + 13: odd, so -(141 >> 1).
        assert_eq!(read_svarint(&[0x4d, 0x02]), Some(-70));
        assert_eq!(read_svarint(&[0x00]), Some(0));
        assert_eq!(read_svarint(&[0x01]), Some(0));
        // Six chunks is the most we accept; u32::MAX needs exactly six.
        assert_eq!(read_varint(&varint(u64::from(u32::MAX))), Some(u64::from(u32::MAX)));
        assert_eq!(read_varint(&[0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x3f]), Some((1 << 36) - 1));
        assert_eq!(read_varint(&[0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x01]), None);
        // Truncated.
        assert_eq!(read_varint(&[]), None);
        assert_eq!(read_varint(&[0x48]), None);
        for v in [0, 1, 62, 63, 64, 4095, 4096, 262_143, 262_144, 1 << 30] {
            assert_eq!(read_varint(&varint(v)), Some(v), "{v}");
            for s in [v as i64, -(v as i64)] {
                assert_eq!(read_svarint(&svarint(s)), Some(s), "{s}");
            }
        }
    }

    #[test]
    fn locations_all_forms() {
        let table = [
            // [0,2): RESUME on the def line (first = 100).
            no_columns(1, 0),
            // [2,8): short form, same line.
            short(3, 4, 9),
            // [8,12): one-line form, +1 -> 101.
            one_line(2, 1, 8, 20),
            // [12,16): one-line form, +2 -> 103.
            one_line(2, 2, 0, 5),
            // [16,18): one-line form, +0 -> 103, columns >= 80.
            one_line(1, 0, 90, 120),
            // [18,22): no location; the running line stays 103.
            no_location(2),
            // [22,38): no-column form, -3 -> 100, eight code units (the maximum).
            no_columns(8, -3),
            // [38,40): long form spanning lines, +70 -> 170 (varint continuation).
            long(1, 70, 3, 4, 200),
            // [40,42): short form with column 79 (kind 9).
            short(1, 79, 80),
            // [42,44): long form, +5000 -> 5170.
            long(1, 5000, 0, 0, 1),
            // [44,46): no-column form, -5069 -> 101.
            no_columns(1, -5069),
        ]
        .concat();
        assert_eq!(
            lines(Locations, &table, 100, 0..50),
            concat(&[
                rep(Some(100), 8),
                rep(Some(101), 4),
                rep(Some(103), 6),
                rep(None, 4),
                rep(Some(100), 16),
                rep(Some(170), 2),
                rep(Some(170), 2),
                rep(Some(5170), 2),
                rep(Some(101), 2),
                rep(None, 4),
            ])
        );
        assert_eq!(line_for_offset(Locations, &table, 100, u32::MAX), None);
    }

    #[test]
    fn locations_hand_encoded_bytes() {
        // Written out byte by byte, independent of the test encoders above:
        // 0xf0 = 1 1110 000: long form, 1 unit; svarint 0x50 0x5c 0x02 = +5000; end-line 0,
        // col+1 = 1, end-col+1 = 0x48 0x03 (200).
        // 0xe9 = 1 1101 001: no-column form, 2 units; svarint 0x4d 0x02 = -70.
        // 0xfb = 1 1111 011: no location, 4 units.
        // 0x80 = 1 0000 000: short form, 1 unit; column byte 0x12.
        let table = [0xf0, 0x50, 0x5c, 0x02, 0x00, 0x01, 0x48, 0x03, 0xe9, 0x4d, 0x02, 0xfb, 0x80, 0x12];
        assert_eq!(
            lines(Locations, &table, 1, 0..18),
            concat(&[rep(Some(5001), 2), rep(Some(4931), 4), rep(None, 8), rep(Some(4931), 2), rep(None, 2)])
        );
    }

    #[test]
    fn locations_large_first_line() {
        let table = [no_columns(1, 0), long(2, 4096, 0, 0, 0), one_line(1, 2, 0, 1)].concat();
        assert_eq!(line_for_offset(Locations, &table, 70_000, 0), Some(70_000));
        assert_eq!(line_for_offset(Locations, &table, 70_000, 2), Some(74_096));
        assert_eq!(line_for_offset(Locations, &table, 70_000, 6), Some(74_098));
        assert_eq!(line_for_offset(Locations, &table, 70_000, 8), None);
    }

    #[test]
    fn locations_malformed() {
        // Empty.
        assert_eq!(line_for_offset(Locations, &[], 1, 0), None);
        // First byte is not an entry header.
        assert_eq!(line_for_offset(Locations, &[0x12, 0x80, 0x00], 1, 0), None);
        // Long form cut off after its header, and mid-varint.
        let mut table = short(1, 0, 1);
        table.push(header(KIND_LONG, 1));
        assert_eq!(line_for_offset(Locations, &table, 1, 0), Some(1));
        assert_eq!(line_for_offset(Locations, &table, 1, 2), None);
        table.push(0x48);
        assert_eq!(line_for_offset(Locations, &table, 1, 2), None);
        // A continuation chunk cut off by the next entry's header.
        let table = [vec![header(KIND_NO_COLUMNS, 1), 0x48], short(1, 0, 1)].concat();
        assert_eq!(line_for_offset(Locations, &table, 1, 0), None);
        assert_eq!(line_for_offset(Locations, &table, 1, 2), None);
        // A broken entry poisons everything after it, not what came before.
        let table = [no_columns(1, 2), vec![header(KIND_NO_COLUMNS, 1)], short(1, 0, 1)].concat();
        assert_eq!(line_for_offset(Locations, &table, 1, 0), Some(3));
        assert_eq!(line_for_offset(Locations, &table, 1, 2), None);
        assert_eq!(line_for_offset(Locations, &table, 1, 4), None);
        // Over-long varint.
        let table = [header(KIND_LONG, 1), 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x01];
        assert_eq!(line_for_offset(Locations, &table, 1, 0), None);
        // Line below zero, and above u32::MAX.
        assert_eq!(line_for_offset(Locations, &no_columns(1, -2), 1, 0), None);
        assert_eq!(line_for_offset(Locations, &one_line(1, 1, 0, 0), u32::MAX, 0), None);
        // Short-form column bytes are not needed for the line, as in CPython.
        assert_eq!(line_for_offset(Locations, &[header(3, 2)], 8, 3), Some(8));
    }

    #[test]
    fn garbage_never_panics() {
        // xorshift64: deterministic pseudo-random tables of every length up to 64.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for len in 0..64 {
            for _ in 0..200 {
                let table: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let first = next() as u32;
                for format in [Lnotab, Linetable310, Locations] {
                    for off in [0, 1, 2, 7, 64, 255, 256, 1000, u32::MAX - 1, u32::MAX] {
                        let _ = line_for_offset(format, &table, first, off);
                    }
                    let _ = line_for_offset(format, &table, first, next() as u32 % 4096);
                }
            }
        }
    }

    // ---- Ground truth from real interpreters ----

    /// The pyenv builds this test expects (`/root/.pyenv/versions/<v>/bin/python3.<minor>`).
    /// Other 3.8–3.14 builds found there (a 3.14, a free-threaded `t` build) are tested too.
    const EXPECTED_PYTHONS: &[&str] = &["3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0"];
    const PYENV_VERSIONS: &str = "/root/.pyenv/versions";

    /// Compiles a generated module (never runs it) and prints one JSON line with the version,
    /// then one per code object (walking `co_consts` recursively) with its line table, first
    /// line, bytecode length and the interpreter's own answer for every code unit: the C
    /// `PyCode_Addr2Line` through ctypes (what `frame.f_lineno` uses), plus
    /// `dis.findlinestarts` (3.8/3.9), `co_lines()` (3.10+) and `co_positions()` (3.11+).
    const GROUND_TRUTH_PY: &str = r##"
import ctypes, dis, json, sys

VER = tuple(sys.version_info[:2])

def source():
    out = []
    out.append("import functools\n")
    out.append("X = 1\n")
    out.append("def simple(a, b):\n    c = a + b\n    return c\n")
    out.append(
        "def multi_line(a, b):\n"
        "    x = (a +\n"
        "         b *\n"
        "         a)\n"
        "    y = [\n"
        "        a,\n"
        "        b,\n"
        "    ]\n"
        "    return dict(x=x,\n"
        "                y=y,\n"
        "                z=a)\n"
    )
    out.append(
        "def loops(n):\n"
        "    total = 0\n"
        "    for i in range(n):\n"
        "        if i % 2:\n"
        "            continue\n"
        "        while total < i:\n"
        "            total += 1\n"
        "        else:\n"
        "            total -= 1\n"
        "    return total\n"
    )
    out.append(
        "def handlers(f):\n"
        "    try:\n"
        "        r = f()\n"
        "    except (ValueError, KeyError) as e:\n"
        "        r = str(e)\n"
        "    except Exception:\n"
        "        raise\n"
        "    else:\n"
        "        r = r * 2\n"
        "    finally:\n"
        "        f = None\n"
        "    with open('/dev/null') as fh, open('/dev/null') as g:\n"
        "        fh.read()\n"
        "    assert r, 'no result'\n"
        "    return r\n"
    )
    # Push the next definitions past line 100.
    out.append("\n" * 120)
    out.append(
        "@functools.lru_cache(maxsize=None)\n"
        "@staticmethod\n"
        "def decorated(a):\n"
        "    return [x * y for x in range(a)\n"
        "            for y in range(x) if y % 3]\n"
        "def comprehensions(a):\n"
        "    s = {x for x in a}\n"
        "    d = {k: v\n"
        "         for k, v in zip(a, a)}\n"
        "    g = (x + 1 for x in a)\n"
        "    f = lambda q: (q +\n"
        "                   1)\n"
        "    return s, d, list(g), f(1)\n"
        "class Klass(object):\n"
        "    attr = 3\n"
        "    def method(self, a):\n"
        "        def inner(b):\n"
        "            return a + b + self.attr\n"
        "        return inner\n"
        "    @property\n"
        "    def prop(self):\n"
        "        return self.attr if self.attr else -1\n"
        "async def coro(a):\n"
        "    async with a as b:\n"
        "        await b\n"
        "    async for x in a:\n"
        "        yield x\n"
        "def gen(a):\n"
        "    yield a\n"
        "    yield from a\n"
    )
    # Many instructions on one line: byte deltas > 255, entries > 8 code units.
    out.append("def wide(a): return [" + ", ".join("a + %d" % i for i in range(150)) + "]\n")
    # Line jumps past varint chunk boundaries (> 63, > 4095), forwards and backwards.
    out.append(
        "def jumps(a):\n"
        "    x = dict(\n"
        "        a=a," + "\n" * 70 +
        "        b=a," + "\n" * 5000 +
        "        c=a)\n"
        "    return x\n"
    )
    # A long function (> 300 lines).
    body = ["def long_function(a):", "    total = 0"]
    for i in range(400):
        if i % 7 == 0:
            body.append("    if total > %d:" % i)
            body.append("        total -= %d" % i)
        elif i % 11 == 0:
            body.append("")
            body.append("    total = (total +")
            body.append("             %d)" % i)
        else:
            body.append("    total += a * %d" % i)
    body.append("    return total")
    out.append("\n".join(body) + "\n")
    # A function far down the file.
    out.append("\n" * 70000)
    out.append("def far_away(a):\n    b = a + 1\n    return b\n")
    return "".join(out)

addr2line = ctypes.pythonapi.PyCode_Addr2Line
addr2line.argtypes = [ctypes.py_object, ctypes.c_int]
addr2line.restype = ctypes.c_int

def walk(co):
    yield co
    for c in co.co_consts:
        if isinstance(c, type(co)):
            yield from walk(c)

print(json.dumps({"version": list(VER)}))
module = compile(source(), "<pyleak-linetable-test>", "exec")
for co in walk(module):
    n = len(co.co_code)
    rec = {
        "name": co.co_name,
        "first_line": co.co_firstlineno,
        "code_len": n,
        "table": (co.co_lnotab if VER < (3, 10) else co.co_linetable).hex(),
    }
    rec["addr2line"] = []
    for off in range(0, n, 2):
        line = addr2line(co, off)
        rec["addr2line"].append(None if line < 0 else line)
    if VER < (3, 10):
        rec["starts"] = [list(s) for s in dis.findlinestarts(co)]
    else:
        rec["co_lines"] = [list(r) for r in co.co_lines()]
    if VER >= (3, 11):
        rec["positions"] = [p[0] for p in co.co_positions()]
    print(json.dumps(rec))
"##;

    #[derive(serde::Deserialize)]
    struct Header {
        version: (u32, u32),
    }

    #[derive(serde::Deserialize)]
    struct CodeRecord {
        name: String,
        first_line: u32,
        code_len: u32,
        table: String,
        /// `PyCode_Addr2Line(co, 2 * i)` for code unit i, `None` for -1.
        addr2line: Vec<Option<u32>>,
        /// `dis.findlinestarts(co)` (3.8/3.9).
        starts: Option<Vec<(u32, u32)>>,
        /// `co.co_lines()` (3.10+): `[start, end)` byte ranges.
        co_lines: Option<Vec<(u32, u32, Option<u32>)>>,
        /// `co.co_positions()` start lines, one per code unit (3.11+).
        positions: Option<Vec<Option<u32>>>,
    }

    fn from_hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd hex length");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex from python"))
            .collect()
    }

    /// Interpreters to test: the expected pyenv builds, plus any other 3.8–3.14 build present.
    fn find_pythons() -> Vec<(String, std::path::PathBuf)> {
        let minor_of = |v: &str| -> Option<u32> {
            let mut parts = v.split('.');
            (parts.next() == Some("3")).then_some(())?;
            let minor: u32 = parts.next()?.parse().ok()?;
            (8..=14).contains(&minor).then_some(minor)
        };
        let mut versions: Vec<String> = EXPECTED_PYTHONS.iter().map(|v| v.to_string()).collect();
        if let Ok(dir) = std::fs::read_dir(PYENV_VERSIONS) {
            let mut extra: Vec<String> = dir
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|v| minor_of(v).is_some() && !versions.contains(v))
                .collect();
            extra.sort();
            versions.extend(extra);
        }
        let mut found = Vec::new();
        for v in versions {
            let Some(minor) = minor_of(&v) else { continue };
            let bin =
                std::path::Path::new(PYENV_VERSIONS).join(&v).join("bin").join(format!("python3.{minor}"));
            if bin.is_file() {
                found.push((v, bin));
            } else {
                eprintln!("skipping CPython {v}: {} not found", bin.display());
            }
        }
        found
    }

    /// What the real tables exercised, so the test fails if the generated source stops
    /// producing the interesting cases.
    #[derive(Default, Debug)]
    struct Coverage {
        offsets: usize,
        no_line: usize,
        max_first_line: u32,
        negative_delta: bool,
        /// 3.8–3.10: a zero-byte continuation pair or a 254/255-byte pair.
        split_pairs: bool,
        /// 3.11+: kinds seen, and the largest |line delta|.
        kinds: [bool; 16],
        max_abs_delta: i64,
    }

    fn note_coverage(format: LineTableFormat, table: &[u8], cov: &mut Coverage) {
        match format {
            Lnotab | Linetable310 => {
                for &[byte_delta, line_delta] in table.as_chunks::<2>().0 {
                    let delta = line_delta as i8;
                    if delta < 0 && !(format == Linetable310 && delta == LINETABLE310_NO_LINE) {
                        cov.negative_delta = true;
                    }
                    if byte_delta == 0 || byte_delta >= 254 {
                        cov.split_pairs = true;
                    }
                }
            }
            Locations => {
                for entry in LocationEntries::new(table) {
                    let entry = entry.expect("interpreter wrote a malformed location table");
                    cov.kinds[usize::from(entry.kind)] = true;
                    cov.negative_delta |= entry.line_delta < 0;
                    cov.max_abs_delta = cov.max_abs_delta.max(entry.line_delta.abs());
                }
            }
        }
    }

    fn check_record(minor: u32, format: LineTableFormat, rec: &CodeRecord, cov: &mut Coverage) {
        let table = from_hex(&rec.table);
        let units = rec.code_len / 2;
        let ctx = |off: u32| format!("3.{minor} {} (first line {}) at byte {off}", rec.name, rec.first_line);
        assert_eq!(rec.addr2line.len(), units as usize, "{}", ctx(0));
        note_coverage(format, &table, cov);
        cov.max_first_line = cov.max_first_line.max(rec.first_line);

        for unit in 0..units {
            let off = unit * 2;
            let ours = line_for_offset(format, &table, rec.first_line, off);
            let idx = unit as usize;
            assert_eq!(ours, rec.addr2line[idx], "PyCode_Addr2Line, {}", ctx(off));
            // Inside an instruction (3.8/3.9 f_lasti is always even, but be safe).
            assert_eq!(
                line_for_offset(format, &table, rec.first_line, off + 1),
                ours,
                "odd offset, {}",
                ctx(off + 1)
            );
            if let Some(starts) = &rec.starts {
                let expected = starts.iter().rev().find(|s| s.0 <= off).map(|s| s.1);
                assert!(expected.is_some(), "no line start at or before {}", ctx(off));
                assert_eq!(ours, expected, "dis.findlinestarts, {}", ctx(off));
            }
            if let Some(ranges) = &rec.co_lines {
                let range = ranges.iter().find(|r| r.0 <= off && off < r.1);
                let range = range.unwrap_or_else(|| panic!("co_lines misses {}", ctx(off)));
                assert_eq!(ours, range.2, "co_lines, {}", ctx(off));
            }
            if let Some(positions) = &rec.positions {
                assert_eq!(positions.len(), units as usize, "{}", ctx(off));
                assert_eq!(ours, positions[idx], "co_positions, {}", ctx(off));
            }
            cov.offsets += 1;
            cov.no_line += usize::from(ours.is_none());
        }
        if format != Lnotab {
            // 3.10+ tables cover the bytecode exactly.
            assert_eq!(
                line_for_offset(format, &table, rec.first_line, rec.code_len),
                None,
                "past the end, {}",
                ctx(rec.code_len)
            );
        }
    }

    fn check_python(version: &str, bin: &std::path::Path) {
        let out = std::process::Command::new(bin)
            .args(["-I", "-c", GROUND_TRUTH_PY])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
        assert!(
            out.status.success(),
            "{} failed: {}\n{}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("utf-8 from python");
        let mut lines = stdout.lines();
        let header: Header = serde_json::from_str(lines.next().expect("version line")).expect("version json");
        let (major, minor) = header.version;
        assert_eq!(major, 3, "{version}");
        let format = match minor {
            8 | 9 => Lnotab,
            10 => Linetable310,
            11..=14 => Locations,
            _ => panic!("{version}: unexpected CPython 3.{minor}"),
        };
        let mut cov = Coverage::default();
        let mut records = 0;
        for line in lines {
            let rec: CodeRecord = serde_json::from_str(line).expect("record json");
            check_record(minor, format, &rec, &mut cov);
            records += 1;
        }
        eprintln!("CPython {version}: {records} code objects, {cov:?}");

        // The generated source must keep exercising what it is there for.
        assert!(records >= 15, "{version}: only {records} code objects");
        assert!(cov.offsets >= 3000, "{version}: only {} offsets", cov.offsets);
        assert!(cov.max_first_line > 70_000, "{version}: {cov:?}");
        assert!(cov.negative_delta, "{version}: no negative line delta: {cov:?}");
        match format {
            Lnotab => assert!(cov.split_pairs, "{version}: {cov:?}"),
            Linetable310 => {
                assert!(cov.split_pairs, "{version}: {cov:?}");
                assert!(cov.no_line > 0, "{version}: no 'no line' entry: {cov:?}");
            }
            Locations => {
                assert!(cov.kinds.iter().all(|&k| k), "{version}: not every kind: {cov:?}");
                assert!(cov.max_abs_delta > 4095, "{version}: {cov:?}");
                assert!(cov.no_line > 0, "{version}: {cov:?}");
            }
        }
    }

    #[test]
    fn matches_real_interpreters() {
        let pythons = find_pythons();
        assert!(
            !pythons.is_empty(),
            "no CPython 3.8-3.14 under {PYENV_VERSIONS}: nothing to check the decoders against"
        );
        for (version, bin) in &pythons {
            check_python(version, bin);
        }
    }
}
