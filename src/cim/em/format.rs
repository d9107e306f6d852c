//! D-MAC-EM files, version 1, in two forms.
//!
//! **Counts table** (text, for people and spreadsheets):
//! ```text
//! # comments start with '#'
//! format: dnat-dmacem-text 1
//! name: my-chip-2024-03
//! synthetic: false
//! description: 64-row macro, die 7, 25 °C
//! ideal_codes: -256 255
//! measured_codes: -256 255
//! fill: nearest
//! fixed_pattern: column_gain=0.02 column_offset=0.5 chip_gain=0.01 chip_offset=0.2
//! ideal measured count
//! -3 -3 1510
//! -3 -2 212
//! ```
//! Header lines are `key: value` (all keys required, any order, `description` may be
//! empty); after the `ideal measured count` line, one entry per line, three fields
//! separated by spaces, tabs or commas. Counts are non-negative numbers (not
//! necessarily integers). Rows of an ideal code that has no entry are unmeasured and
//! get the `fill` policy (`nearest`, `identity` or `reject`). `fixed_pattern` is
//! optional (absent: none): the spread of per-column and per-chip gain (relative) and
//! offset (codes) around the table, see [`crate::cim::chip`]. A per-column model
//! (`dnat em fit` of a log with a column field) adds one `column: INDEX GAIN OFFSET`
//! line per ADC column, in order from 0: the measured chip.
//!
//! **Binary** (compact, exact), in the framing of every dnat binary file ([`crate::io::framed`]):
//! magic `DNATDMEM`, u32 version (2; version 1 is read), u64 payload length,
//! u32 CRC-32 of the payload, then the zlib-compressed payload: name, description
//! (u32 length + UTF-8 each), synthetic u8, kmin, kmax, jmin, jmax (i32), fill u8,
//! (version 2 only: column gain, column offset, chip gain, chip offset spreads, f64;
//! measured column count u32, then per column gain and offset f32),
//! entry count u32, and per entry ideal i32, measured i32, count f64; little-endian.
//!
//! [`load`] tells the two apart by the magic bytes.

use super::table::{ErrorModel, FillPolicy, ModelInfo};
use crate::io::atomic;
use crate::{Error, Result};
use byteorder::{LittleEndian as LE, ReadBytesExt, WriteBytesExt};
use std::fmt::Write as _;
use std::io::{Cursor, Read};
use std::path::Path;

const MAGIC: &[u8; 8] = b"DNATDMEM";
const TEXT_FORMAT: &str = "dnat-dmacem-text 1";

/// The counts table of `m` (module docs), one line per (ideal, measured) pair.
pub fn to_text(m: &ErrorModel) -> String {
    let mut s = String::new();
    writeln!(
        s,
        "# D-MAC-EM counts table (dnat). One line per (ideal ADC code, measured ADC code) pair."
    )
    .unwrap();
    writeln!(s, "format: {TEXT_FORMAT}").unwrap();
    writeln!(s, "name: {}", m.info.name).unwrap();
    writeln!(s, "synthetic: {}", m.info.synthetic).unwrap();
    writeln!(s, "description: {}", m.info.description.replace('\n', " ")).unwrap();
    writeln!(s, "ideal_codes: {} {}", m.kmin, m.kmax).unwrap();
    writeln!(s, "measured_codes: {} {}", m.jmin, m.jmax).unwrap();
    writeln!(s, "fill: {}", m.fill.name()).unwrap();
    let p = m.fixed_pattern;
    if !p.is_zero() {
        writeln!(
            s,
            "fixed_pattern: column_gain={} column_offset={} chip_gain={} chip_offset={}",
            p.column_gain, p.column_offset, p.chip_gain, p.chip_offset
        )
        .unwrap();
    }
    for (c, (g, o)) in m.columns.iter().enumerate() {
        writeln!(s, "column: {c} {g} {o}").unwrap();
    }
    writeln!(s, "ideal measured count").unwrap();
    for &(k, j, c) in m.counts() {
        writeln!(s, "{k} {j} {c}").unwrap();
    }
    s
}

/// Parses a counts table; `path` names the file in errors, which give the line.
pub fn from_text(text: &str, path: &Path) -> Result<ErrorModel> {
    let err = |line: usize, msg: String| Error::format(path, format!("line {line}: {msg}"));
    let mut header: Vec<(String, String)> = Vec::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    let mut body_start = None;
    for (n, l) in lines.by_ref() {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.split([' ', '\t', ',']).filter(|t| !t.is_empty()).collect::<Vec<_>>()
            == ["ideal", "measured", "count"]
        {
            body_start = Some(n);
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| {
            err(n, format!("expected 'key: value' or the 'ideal measured count' line, got '{l}'"))
        })?;
        header.push((k.trim().to_string(), v.trim().to_string()));
    }
    if body_start.is_none() {
        return Err(Error::format(
            path,
            "no 'ideal measured count' line: truncated, or not a D-MAC-EM counts table",
        ));
    }
    let get = |key: &str| -> Result<&str> {
        header
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| Error::format(path, format!("header has no '{key}:' line")))
    };
    if get("format")? != TEXT_FORMAT {
        return Err(Error::format(
            path,
            format!("format '{}' is not '{TEXT_FORMAT}'", get("format")?),
        ));
    }
    let pair = |key: &str| -> Result<(i32, i32)> {
        let v = get(key)?;
        let p: Vec<&str> = v.split_whitespace().collect();
        match p.as_slice() {
            [a, b] => Ok((
                a.parse()
                    .map_err(|_| Error::format(path, format!("{key}: '{a}' is not an integer")))?,
                b.parse()
                    .map_err(|_| Error::format(path, format!("{key}: '{b}' is not an integer")))?,
            )),
            _ => Err(Error::format(
                path,
                format!("{key}: expected two integers (first and last code), got '{v}'"),
            )),
        }
    };
    let synthetic = match get("synthetic")? {
        "true" | "yes" => true,
        "false" | "no" => false,
        o => {
            return Err(Error::format(path, format!("synthetic: '{o}' is not true or false")));
        }
    };
    let info = ModelInfo {
        name: get("name")?.to_string(),
        description: get("description").unwrap_or("").to_string(),
        synthetic,
    };
    let fill = FillPolicy::parse(get("fill")?).map_err(|e| Error::format(path, e.to_string()))?;
    let (kr, jr) = (pair("ideal_codes")?, pair("measured_codes")?);
    let mut entries = Vec::new();
    for (n, l) in lines {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = l.split([' ', '\t', ',']).filter(|t| !t.is_empty()).collect();
        if f.len() != 3 {
            return Err(err(n, format!("expected 'ideal measured count', got '{l}'")));
        }
        let k: i32 =
            f[0].parse().map_err(|_| err(n, format!("ideal code '{}' is not an integer", f[0])))?;
        let j: i32 = f[1]
            .parse()
            .map_err(|_| err(n, format!("measured code '{}' is not an integer", f[1])))?;
        let c: f64 =
            f[2].parse().map_err(|_| err(n, format!("count '{}' is not a number", f[2])))?;
        entries.push((k, j, c));
    }
    let mut m = ErrorModel::from_counts(info, kr, jr, fill, entries)
        .map_err(|e| Error::format(path, e.to_string()))?;
    if let Some((_, v)) = header.iter().find(|(k, _)| k == "fixed_pattern") {
        m.fixed_pattern = parse_fixed_pattern(v)
            .map_err(|e| Error::format(path, format!("fixed_pattern: {e}")))?;
    }
    // `column: INDEX GAIN OFFSET`, one per ADC column, in order from 0.
    let mut columns = Vec::new();
    for (_, v) in header.iter().filter(|(k, _)| k == "column") {
        let f: Vec<&str> = v.split_whitespace().collect();
        let bad = || {
            Error::format(
                path,
                format!(
                    "column: '{v}' is not 'INDEX GAIN OFFSET' with INDEX {} next",
                    columns.len()
                ),
            )
        };
        let [i, g, o] = f[..] else { return Err(bad()) };
        let (i, g, o): (usize, f32, f32) = (
            i.parse().map_err(|_| bad())?,
            g.parse().map_err(|_| bad())?,
            o.parse().map_err(|_| bad())?,
        );
        if i != columns.len() || !(g.is_finite() && g > 0.0 && o.is_finite()) {
            return Err(bad());
        }
        columns.push((g, o));
    }
    if !columns.is_empty() {
        let p = m.fixed_pattern;
        m.set_columns(columns);
        // A file's own spreads (chip-to-chip ones in particular) win over the derived.
        if !p.is_zero() {
            m.fixed_pattern = p;
        }
    }
    Ok(m)
}

/// `column_gain=G column_offset=O chip_gain=G chip_offset=O` (any subset, any order).
fn parse_fixed_pattern(v: &str) -> std::result::Result<crate::cim::FixedPattern, String> {
    let mut p = crate::cim::FixedPattern::default();
    for kv in v.split_whitespace() {
        let (k, x) = kv.split_once('=').ok_or_else(|| format!("'{kv}' is not key=value"))?;
        let x: f64 = x.parse().map_err(|_| format!("'{x}' is not a number"))?;
        *match k {
            "column_gain" => &mut p.column_gain,
            "column_offset" => &mut p.column_offset,
            "chip_gain" => &mut p.chip_gain,
            "chip_offset" => &mut p.chip_offset,
            o => {
                return Err(format!(
                    "unknown key '{o}' (column_gain, column_offset, chip_gain, chip_offset)"
                ));
            }
        } = x;
    }
    p.validate()?;
    Ok(p)
}

/// The binary form of `m`, version 2 (module docs).
pub fn to_binary(m: &ErrorModel) -> Vec<u8> {
    let mut p = Vec::new();
    for s in [&m.info.name, &m.info.description] {
        p.write_u32::<LE>(s.len() as u32).unwrap();
        p.extend_from_slice(s.as_bytes());
    }
    p.write_u8(m.info.synthetic as u8).unwrap();
    for v in [m.kmin, m.kmax, m.jmin, m.jmax] {
        p.write_i32::<LE>(v).unwrap();
    }
    p.write_u8(m.fill.code()).unwrap();
    let f = m.fixed_pattern;
    for v in [f.column_gain, f.column_offset, f.chip_gain, f.chip_offset] {
        p.write_f64::<LE>(v).unwrap();
    }
    p.write_u32::<LE>(m.columns.len() as u32).unwrap();
    for &(g, o) in &m.columns {
        p.write_f32::<LE>(g).unwrap();
        p.write_f32::<LE>(o).unwrap();
    }
    p.write_u32::<LE>(m.counts().len() as u32).unwrap();
    for &(k, j, c) in m.counts() {
        p.write_i32::<LE>(k).unwrap();
        p.write_i32::<LE>(j).unwrap();
        p.write_f64::<LE>(c).unwrap();
    }
    crate::io::framed::encode(MAGIC, 2, &p)
}

/// Parses the binary form (version 1 or 2); `path` names the file in errors.
pub fn from_binary(bytes: &[u8], path: &Path) -> Result<ErrorModel> {
    let bad = |m: &str| Error::format(path, m.to_string());
    // The framing every dnat binary file shares: magic, version, length, CRC-32, zlib.
    let (version, p) =
        crate::io::framed::decode(bytes, MAGIC, "binary D-MAC-EM file", 2).map_err(|m| bad(&m))?;
    let c = &mut Cursor::new(&p[..]);
    let eof = |_| bad("truncated payload");
    let mut strings = Vec::new();
    for _ in 0..2 {
        let n = c.read_u32::<LE>().map_err(eof)? as usize;
        if n > p.len() {
            return Err(bad("corrupt string length"));
        }
        let mut b = vec![0u8; n];
        c.read_exact(&mut b).map_err(eof)?;
        strings.push(String::from_utf8(b).map_err(|_| bad("a name is not UTF-8"))?);
    }
    let synthetic = c.read_u8().map_err(eof)? != 0;
    let mut r = [0i32; 4];
    for v in &mut r {
        *v = c.read_i32::<LE>().map_err(eof)?;
    }
    let fill = FillPolicy::from_code(c.read_u8().map_err(eof)?)
        .ok_or_else(|| bad("unknown fill policy code"))?;
    let mut fp = crate::cim::FixedPattern::default();
    if version >= 2 {
        for v in
            [&mut fp.column_gain, &mut fp.column_offset, &mut fp.chip_gain, &mut fp.chip_offset]
        {
            *v = c.read_f64::<LE>().map_err(eof)?;
        }
        fp.validate().map_err(|e| bad(&format!("fixed pattern: {e}")))?;
    }
    let mut columns = Vec::new();
    if version >= 2 {
        let nc = c.read_u32::<LE>().map_err(eof)? as usize;
        if nc * 8 > p.len() {
            return Err(bad("corrupt column count"));
        }
        for _ in 0..nc {
            let (g, o) = (c.read_f32::<LE>().map_err(eof)?, c.read_f32::<LE>().map_err(eof)?);
            if !(g.is_finite() && g > 0.0 && o.is_finite()) {
                return Err(bad("a column's gain or offset is not a finite number (gain > 0)"));
            }
            columns.push((g, o));
        }
    }
    let n = c.read_u32::<LE>().map_err(eof)? as usize;
    if n * 16 != p.len() - c.position() as usize {
        return Err(bad("entry count does not match the payload size"));
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push((
            c.read_i32::<LE>().map_err(eof)?,
            c.read_i32::<LE>().map_err(eof)?,
            c.read_f64::<LE>().map_err(eof)?,
        ));
    }
    let info = ModelInfo { name: strings[0].clone(), description: strings[1].clone(), synthetic };
    let mut m = ErrorModel::from_counts(info, (r[0], r[1]), (r[2], r[3]), fill, entries)
        .map_err(|e| Error::format(path, e.to_string()))?;
    m.fixed_pattern = fp;
    m.columns = columns;
    Ok(m)
}

/// Loads either form (binary by its magic bytes, else the counts table).
pub fn load(path: &Path) -> Result<ErrorModel> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.starts_with(MAGIC) {
        from_binary(&bytes, path)
    } else {
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            Error::format(path, "neither a binary D-MAC-EM file nor a UTF-8 counts table")
        })?;
        from_text(text, path)
    }
}

/// Saves atomically: the counts table for `.txt`/`.tsv`/`.csv`, else binary.
pub fn save(m: &ErrorModel, path: &Path) -> Result<()> {
    let text = matches!(path.extension().and_then(|e| e.to_str()), Some("txt" | "tsv" | "csv"));
    let bytes = if text { to_text(m).into_bytes() } else { to_binary(m) };
    atomic::write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cim::em::presets;

    #[test]
    fn both_forms_round_trip_exactly() {
        let m = presets::preset("moderate", (-256, 255)).unwrap();
        let p = Path::new("m.txt");
        let t = from_text(&to_text(&m), p).unwrap();
        let b = from_binary(&to_binary(&m), p).unwrap();
        for x in [&t, &b] {
            assert_eq!(x.counts(), m.counts());
            assert_eq!(x.info, m.info);
            assert_eq!(
                (x.kmin, x.kmax, x.jmin, x.jmax, x.fill),
                (m.kmin, m.kmax, m.jmin, m.jmax, m.fill)
            );
        }
    }

    #[test]
    fn damaged_files_are_clear_errors() {
        let m = presets::preset("mild", (-16, 15)).unwrap();
        let p = Path::new("chip.dmacem");
        let text = to_text(&m);
        let e = from_text(&text[..text.len() / 3], p).unwrap_err().to_string();
        assert!(e.contains("chip.dmacem"), "{e}");
        let e = from_text(&text.replace("ideal measured count", "ideal measured count\n1 2"), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 'ideal measured count'"), "{e}");
        let e = from_text(&text.replacen("\n-16 ", "\n-99 ", 1), p).unwrap_err().to_string();
        assert!(e.contains("unknown ideal code -99"), "{e}");
        let e = from_text(&format!("{text}3 3 -5\n"), p).unwrap_err().to_string();
        assert!(e.contains("≥ 0"), "{e}");
        let e = from_text(&format!("{text}3 3 inf\n"), p).unwrap_err().to_string();
        assert!(e.contains("finite"), "{e}");
        let bin = to_binary(&m);
        assert!(
            from_binary(&bin[..bin.len() - 3], p).unwrap_err().to_string().contains("truncated")
        );
        let mut flipped = bin.clone();
        let n = flipped.len();
        flipped[n - 5] ^= 1;
        assert!(from_binary(&flipped, p).is_err());
        for seed in 0..50u64 {
            let mut r = crate::rng::KeyedRng::new(&[seed, 9]);
            let mut junk = bin[..24].to_vec();
            junk.extend((0..bin.len() - 24).map(|_| r.next_u64() as u8));
            assert!(from_binary(&junk, p).is_err());
            let txt: String =
                (0..200).map(|_| (b' ' + (r.next_u64() % 90) as u8) as char).collect();
            assert!(from_text(&txt, p).is_err());
        }
    }
}
