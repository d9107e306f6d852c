//! The framing shared by dnat's binary files (checkpoints, deployable models):
//!
//! ```text
//! magic    8 bytes  identifies the kind of file
//! version  u32 LE
//! length   u64 LE   length of the compressed payload
//! crc32    u32 LE   CRC-32 of the uncompressed payload
//! payload  zlib(…)
//! ```
//! so that truncation, padding, bit rot and a file of the wrong kind are each caught
//! before a byte of the payload is interpreted.

use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use std::io::{Read, Write};

const HEADER: usize = 24;

/// The largest payload a dnat file may inflate to (VGG16 with optimizer state is ~0.5 GiB).
pub const MAX_PAYLOAD: u64 = 4 << 30;

/// `payload` framed under `magic` and `version`: the header, then the payload zlib-compressed.
pub fn encode(magic: &[u8; 8], version: u32, payload: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(payload);
    let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    z.write_all(payload).expect("writing to memory");
    let z = z.finish().expect("writing to memory");
    let mut out = Vec::with_capacity(z.len() + HEADER);
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(z.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&z);
    out
}

/// Checks the frame and returns (version, payload). `what` names the kind of file in
/// messages ("checkpoint"); versions `1..=max_version` are accepted.
pub fn decode(
    bytes: &[u8],
    magic: &[u8; 8],
    what: &str,
    max_version: u32,
) -> Result<(u32, Vec<u8>), String> {
    decode_at_most(bytes, magic, what, max_version, MAX_PAYLOAD)
}

/// [`decode`] with the inflated payload bounded by `max_payload` bytes.
pub fn decode_at_most(
    bytes: &[u8],
    magic: &[u8; 8],
    what: &str,
    max_version: u32,
    max_payload: u64,
) -> Result<(u32, Vec<u8>), String> {
    if bytes.len() < HEADER || &bytes[..8] != magic {
        return Err(format!("not a dnat {what} (bad magic bytes)"));
    }
    let word =
        |a: usize, b: usize| bytes[a..b].iter().rev().fold(0u64, |acc, &x| acc << 8 | x as u64);
    let version = word(8, 12) as u32;
    if version == 0 || version > max_version {
        return Err(format!(
            "{what} format version {version}, this dnat reads versions 1 to {max_version}"
        ));
    }
    let len = word(12, 20);
    let crc_want = word(20, 24) as u32;
    if (bytes.len() - HEADER) as u64 != len {
        return Err(format!(
            "truncated or padded {what}: header says {len} payload bytes, file has {}",
            bytes.len() - HEADER
        ));
    }
    // Inflate at most MAX_PAYLOAD bytes: a small file that inflates without end (a
    // compression bomb) is refused instead of filling memory.
    let mut payload = Vec::new();
    ZlibDecoder::new(&bytes[HEADER..])
        .take(max_payload + 1)
        .read_to_end(&mut payload)
        .map_err(|e| format!("corrupt {what} payload: {e}"))?;
    if payload.len() as u64 > max_payload {
        return Err(format!(
            "{what} payload inflates past {max_payload} bytes: not a dnat {what} (a compression bomb?)"
        ));
    }
    let mut crc = flate2::Crc::new();
    crc.update(&payload);
    if crc.sum() != crc_want {
        return Err(format!("corrupt {what}: CRC-32 mismatch"));
    }
    Ok((version, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_catches_damage() {
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let b = encode(b"DNATTEST", 3, &payload);
        assert_eq!(decode(&b, b"DNATTEST", "test file", 3).unwrap(), (3, payload));
        let e = |bytes: &[u8], max| decode(bytes, b"DNATTEST", "test file", max).unwrap_err();
        assert!(e(&b, 2).contains("version 3"));
        assert!(e(&b[..b.len() - 1], 3).contains("truncated"));
        assert!(e(b"DNATCKPT0000000000000000", 3).contains("bad magic"));
        let mut flipped = b.clone();
        let n = flipped.len();
        flipped[n - 6] ^= 0x10;
        let msg = e(&flipped, 3);
        assert!(msg.contains("corrupt test file"), "{msg}");
        // A bomb: 64 MiB of zeros in a few kB, refused at the limit, not inflated whole.
        let bomb = encode(b"DNATTEST", 3, &vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100_000);
        let msg = decode_at_most(&bomb, b"DNATTEST", "test file", 3, 1 << 20).unwrap_err();
        assert!(msg.contains("inflates past 1048576 bytes"), "{msg}");
    }
}
