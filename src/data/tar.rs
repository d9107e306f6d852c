//! A minimal streaming reader for (ustar / GNU) tar archives: regular files only,
//! everything else skipped. Enough for the CIFAR archives; errors name the entry.

use std::io::Read;

/// A regular file of the archive.
pub struct Entry {
    /// Its path in the archive (the ustar prefix joined to the name).
    pub path: String,
    /// Its size, in bytes.
    pub size: u64,
}

fn octal(field: &[u8]) -> Option<u64> {
    // GNU base-256 for sizes ≥ 8 GiB never occurs in these archives; reject it.
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Calls `visit(entry, reader)` for every regular file; the visitor reads as much of
/// the entry as it wants (the rest is skipped). Returns a message on a malformed archive.
pub fn for_each_file<R: Read>(
    mut r: R,
    mut visit: impl FnMut(&Entry, &mut dyn Read) -> std::io::Result<()>,
) -> std::result::Result<(), String> {
    let mut header = [0u8; 512];
    let mut long_name: Option<String> = None;
    loop {
        if let Err(e) = r.read_exact(&mut header) {
            return Err(format!("truncated tar archive (no end-of-archive marker): {e}"));
        }
        if header.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let computed: u64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u64 })
            .sum();
        if octal(&header[148..156]) != Some(computed) {
            return Err(
                "corrupt tar header (checksum mismatch): not a tar archive, or damaged".into()
            );
        }
        let size = octal(&header[124..136]).ok_or("corrupt tar header (size field)")?;
        let kind = header[156];
        let mut name = cstr(&header[0..100]);
        if &header[257..262] == b"ustar" {
            let prefix = cstr(&header[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        if let Some(l) = long_name.take() {
            name = l;
        }
        let padded = size.div_ceil(512) * 512;
        let mut body = (&mut r).take(size);
        match kind {
            b'0' | 0 => {
                let entry = Entry { path: name.clone(), size };
                visit(&entry, &mut body).map_err(|e| format!("reading {name}: {e}"))?;
            }
            b'L' => {
                let mut buf = Vec::new();
                body.read_to_end(&mut buf).map_err(|e| format!("truncated tar archive: {e}"))?;
                long_name = Some(cstr(&buf));
            }
            _ => {}
        }
        // Skip what the visitor left unread, then the padding to the next block.
        std::io::copy(&mut body, &mut std::io::sink())
            .map_err(|e| format!("truncated tar archive: {e}"))?;
        if body.limit() != 0 {
            return Err(format!("truncated tar archive inside {name}"));
        }
        let pad = padded - size;
        let skipped = std::io::copy(&mut (&mut r).take(pad), &mut std::io::sink())
            .map_err(|e| format!("truncated tar archive: {e}"))?;
        if skipped != pad {
            return Err(format!("truncated tar archive after {name}"));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a ustar archive in memory (test helper, also used by the CIFAR tests).
    pub fn build(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in files {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..108].copy_from_slice(b"0000644\0");
            h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
            h[156] = b'0';
            h[257..263].copy_from_slice(b"ustar\0");
            h[148..156].copy_from_slice(b"        ");
            let sum: u64 = h.iter().map(|&b| b as u64).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    #[test]
    fn reads_files_and_detects_truncation() {
        let tar = build(&[("a/x.bin", b"hello"), ("a/y.bin", &[7u8; 700])]);
        let mut seen = Vec::new();
        for_each_file(&tar[..], |e, r| {
            let mut b = Vec::new();
            r.read_to_end(&mut b)?;
            seen.push((e.path.clone(), b.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![("a/x.bin".to_string(), 5), ("a/y.bin".to_string(), 700)]);
        let err = for_each_file(&tar[..900], |_, _| Ok(())).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let err = for_each_file(&[1u8; 2048][..], |_, _| Ok(())).unwrap_err();
        assert!(err.contains("not a tar archive"), "{err}");
    }
}
