//! Mutation fuzzing of every parser dnat exposes to files and strings from elsewhere,
//! on stable Rust (no cargo-fuzz): data archives, error models (text and binary), fit
//! logs, checkpoints, deployable exports, safetensors, pipeline configs, error-model
//! specs with overrides, and macro descriptions.
//!
//! Each target starts from valid inputs (`tests/fuzz/corpus/<target>/*` where they are
//! small, else built from the committed models), mutates them, and **re-frames** the
//! result where the format has an integrity layer — CRC-32 + zlib for dnat's binary files,
//! gzip for archives — so the mutation reaches the parser instead of being stopped by a
//! checksum. A run fails on a panic, or on one input taking longer than 10 s (a hang);
//! the input is written to `tests/fuzz/crashes/` first. An `Err` is the expected outcome
//! for most inputs and is fine.
//!
//! Default suite: `DNAT_FUZZ_SECS` (default 2) seconds per target.
//! `make fuzz`: `DNAT_FUZZ_SECS=600` (ten minutes per target), with a count per target.

use dnat::cim::MacroSpec;
use dnat::cim::em::{FillPolicy, ModelInfo, fit, format, presets};
use dnat::data::{Dataset, DatasetKind, Normalize};
use dnat::io::checkpoint::{Checkpoint, restore_into};
use dnat::io::deploy::DeployModel;
use dnat::io::{framed, safetensors};
use dnat::nn::build;
use dnat::pipeline::PipelineConfig;
use dnat::rng::mix64;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A small deterministic generator (SplitMix64): the same run for the same seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Integers that find edge cases: zero, ±1, sign and width limits, huge counts.
const INTERESTING: [u64; 12] = [
    0,
    1,
    u64::MAX,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000,
    4_000_000_000,
    0x7fff_ffff_ffff_ffff,
    255,
    65_535,
    1 << 40,
];
/// Tokens that find edge cases in text formats.
const TOKENS: [&str; 16] = [
    "nan",
    "inf",
    "-inf",
    "-1",
    "0",
    "1e308",
    "-1e308",
    "4000000000",
    "-2147483648",
    "2147483647",
    "1e-320",
    "\n",
    "=",
    ",",
    ":",
    "#",
];

/// One random mutation of a byte string.
fn mutate_bytes(r: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(r.next() as u8);
        return;
    }
    let at = r.below(b.len());
    match r.below(8) {
        0 => b[at] ^= 1 << r.below(8),
        1 => b[at] = [0u8, 0xff, 0x7f, 0x80, b'0', b'9'][r.below(6)],
        2 => {
            let v = INTERESTING[r.below(INTERESTING.len())].to_le_bytes();
            let w = [1, 2, 4, 8][r.below(4)];
            for (i, x) in v[..w].iter().enumerate() {
                if at + i < b.len() {
                    b[at + i] = *x;
                }
            }
        }
        3 => {
            let n = r.below(64).min(b.len() - at);
            b.drain(at..at + n);
        }
        4 => {
            let n = r.below(64).min(b.len() - at);
            let dup: Vec<u8> = b[at..at + n].to_vec();
            b.splice(at..at, dup);
        }
        5 => b.truncate(at),
        6 => {
            let n = 1 + r.below(16);
            let ins: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
            b.splice(at..at, ins);
        }
        _ => b[at] = b[at].wrapping_add(1 + r.below(3) as u8),
    }
}

/// One random mutation of a text: a token replaced or inserted, a line dropped or
/// doubled, or a byte-level change.
fn mutate_text(r: &mut Rng, t: &mut String) {
    let lines: Vec<&str> = t.split('\n').collect();
    match r.below(5) {
        0 => {
            // Replace one whitespace/comma/colon/equals-separated token.
            let mut toks: Vec<String> =
                t.split_inclusive([' ', ',', '=', ':', '\n', '\t']).map(String::from).collect();
            if !toks.is_empty() {
                let i = r.below(toks.len());
                let end: String = toks[i]
                    .chars()
                    .last()
                    .filter(|c| " ,=:\n\t".contains(*c))
                    .map(String::from)
                    .unwrap_or_default();
                toks[i] = format!("{}{end}", TOKENS[r.below(TOKENS.len())]);
            }
            *t = toks.concat();
        }
        1 if lines.len() > 1 => {
            let i = r.below(lines.len());
            *t = lines
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, l)| *l)
                .collect::<Vec<_>>()
                .join("\n");
        }
        2 => {
            let i = r.below(lines.len());
            let mut v = lines.clone();
            v.insert(i, lines[i]);
            *t = v.join("\n");
        }
        3 => {
            let at = t
                .char_indices()
                .map(|(i, _)| i)
                .nth(r.below(t.chars().count().max(1)))
                .unwrap_or(0);
            t.insert_str(at, TOKENS[r.below(TOKENS.len())]);
        }
        _ => {
            let mut b = t.clone().into_bytes();
            mutate_bytes(r, &mut b);
            *t = String::from_utf8_lossy(&b).into_owned();
        }
    }
}

/// Re-frames a mutated payload the way dnat writes binary files (so the CRC and zlib
/// checks pass and the payload parser sees the mutation); sometimes the frame itself is
/// mutated instead.
fn reframe(r: &mut Rng, framed_seed: &[u8], max_version: u32) -> Vec<u8> {
    let magic: [u8; 8] = framed_seed[..8].try_into().unwrap();
    let (version, mut payload) =
        framed::decode(framed_seed, &magic, "seed", max_version).expect("seed is a valid file");
    if r.below(10) == 0 {
        let mut b = framed_seed.to_vec();
        mutate_bytes(r, &mut b);
        return b;
    }
    for _ in 0..1 + r.below(4) {
        mutate_bytes(r, &mut payload);
    }
    framed::encode(&magic, version, &payload)
}

/// Runs `target` on mutated inputs for the configured time; returns (inputs, errors).
fn fuzz(
    name: &str,
    seeds: Vec<Vec<u8>>,
    seeds_parse: bool,
    mut make: impl FnMut(&mut Rng, &[u8]) -> Vec<u8>,
    mut target: impl FnMut(&[u8]) -> bool,
) -> (u64, u64) {
    let secs: u64 = std::env::var("DNAT_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let seed: u64 = std::env::var("DNAT_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut r = Rng(seed ^ name.bytes().fold(0u64, |h, b| mix64(h ^ b as u64)));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut runs, mut errors) = (0u64, 0u64);
    // The seeds themselves parse (where a valid input is small enough to be a seed).
    for s in seeds.iter().filter(|_| seeds_parse) {
        assert!(target(s), "{name}: a seed input is refused");
    }
    while Instant::now() < deadline {
        let pick = r.below(seeds.len());
        let input = make(&mut r, &seeds[pick]);
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        let took = started.elapsed();
        if outcome.is_err() || took > Duration::from_secs(10) {
            let dir = Path::new(ROOT).join("tests/fuzz/crashes");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!(
                "{name}-{:016x}",
                mix64(input.iter().fold(0u64, |h, &b| mix64(h ^ b as u64)))
            ));
            std::fs::write(&file, &input).unwrap();
            panic!(
                "{name}: {} on input {} (after {runs} runs)",
                if outcome.is_err() { "panic" } else { "hang" },
                file.display()
            );
        }
        runs += 1;
        errors += !outcome.unwrap() as u64;
    }
    eprintln!(
        "fuzz {name}: {runs} inputs in {secs} s, {errors} refused with an error, 0 panics, 0 hangs"
    );
    (runs, errors)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(ROOT).join("tests/fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

fn text_target(r: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut t = String::from_utf8_lossy(seed).into_owned();
    for _ in 0..1 + r.below(3) {
        mutate_text(r, &mut t);
    }
    t.into_bytes()
}

fn qat_checkpoint() -> Vec<u8> {
    std::fs::read(Path::new(ROOT).join("models/resnet20-w4a8-qat-e2-s0.ckpt")).unwrap()
}

#[test]
fn checkpoints() {
    let p = Path::new("fuzz.ckpt");
    fuzz(
        "checkpoint",
        vec![qat_checkpoint()],
        true,
        |r, s| reframe(r, s, 3),
        |b| match Checkpoint::from_bytes(b) {
            Ok(ck) => {
                let (_, mut store) = build(&ck.spec, 0).unwrap();
                restore_into(&ck.store, &mut store, p).is_ok()
            }
            Err(_) => false,
        },
    );
}

#[test]
fn deployable_exports() {
    let ck = Checkpoint::from_bytes(&qat_checkpoint()).unwrap();
    let (net, mut store) = build(&ck.spec, 0).unwrap();
    restore_into(&ck.store, &mut store, Path::new("qat")).unwrap();
    let seed = DeployModel::from_network(
        net.as_ref(),
        "resnet20",
        &mut store,
        &MacroSpec::preset("default").unwrap(),
        Normalize::for_dataset(DatasetKind::Cifar10),
    )
    .unwrap()
    .to_bytes();
    // And a version-2 file, which has its own layout.
    let v2 = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/deploy-v2-resnet20.dnatd"),
    )
    .unwrap();
    fuzz(
        "deploy",
        vec![seed, v2],
        true,
        |r, s| reframe(r, s, 3),
        |b| DeployModel::from_bytes(b).is_ok(),
    );
}

#[test]
fn error_models_binary() {
    let seeds = ["current-domain", "mild"]
        .iter()
        .map(|n| format::to_binary(&presets::preset(n, (-16, 15)).unwrap()))
        .collect();
    fuzz(
        "em-binary",
        seeds,
        true,
        |r, s| reframe(r, s, 2),
        |b| format::from_binary(b, Path::new("fuzz.dmacem")).is_ok(),
    );
}

#[test]
fn error_models_text() {
    fuzz("em-text", corpus("em-text"), true, text_target, |b| {
        format::from_text(&String::from_utf8_lossy(b), Path::new("fuzz.txt")).is_ok()
    });
}

#[test]
fn fit_logs() {
    let spec = MacroSpec::preset("default").unwrap();
    fuzz("fit-log", corpus("fit-log"), true, text_target, |b| {
        let text = String::from_utf8_lossy(b);
        let step = if text.contains("step 32") { Some(32.0) } else { None };
        match fit::Log::parse(&text, step) {
            Ok(log) => {
                let info =
                    ModelInfo { name: "fuzz".into(), description: String::new(), synthetic: false };
                fit::fit(&log, &spec, info, FillPolicy::Nearest).is_ok()
            }
            Err(_) => false,
        }
    });
}

#[test]
fn safetensors_files() {
    let ck = Checkpoint::from_bytes(
        &std::fs::read(Path::new(ROOT).join("models/resnet20-fp32-s0.ckpt")).unwrap(),
    )
    .unwrap();
    let (_, mut store) = build(&ck.spec, 0).unwrap();
    restore_into(&ck.store, &mut store, Path::new("fp32")).unwrap();
    let seed = safetensors::export(&ck.spec, &store).unwrap();
    let p = Path::new("fuzz.safetensors");
    fuzz(
        "safetensors",
        vec![seed],
        true,
        |r, s| {
            // Half the time the JSON header as text (its length prefix kept right), else bytes.
            let n = u64::from_le_bytes(s[..8].try_into().unwrap()) as usize;
            if r.below(2) == 0 && n + 8 <= s.len() {
                let mut h = String::from_utf8_lossy(&s[8..8 + n]).into_owned();
                mutate_text(r, &mut h);
                let mut out = (h.len() as u64).to_le_bytes().to_vec();
                out.extend_from_slice(h.as_bytes());
                out.extend_from_slice(&s[8 + n..]);
                out
            } else {
                let mut b = s.to_vec();
                mutate_bytes(r, &mut b);
                b
            }
        },
        |b| match safetensors::spec_from_metadata(b, p) {
            Ok(Some(spec)) => safetensors::import(b, &spec, p).is_ok(),
            _ => false,
        },
    );
}

#[test]
fn pipeline_configs() {
    fuzz("pipeline-config", corpus("pipeline-config"), true, text_target, |b| {
        PipelineConfig::parse(&String::from_utf8_lossy(b)).is_ok()
    });
}

#[test]
fn error_model_specs() {
    let spec = MacroSpec::preset("default").unwrap();
    fuzz("em-spec", corpus("em-spec"), true, text_target, |b| {
        let s = String::from_utf8_lossy(b);
        let s = s.trim();
        presets::is_preset(s) && presets::preset(s, (spec.adc.kmin, spec.adc.kmax)).is_ok()
    });
}

#[test]
fn macro_descriptions() {
    // A macro is described by a preset name plus its fields; mutate the fields' values.
    let seeds: Vec<Vec<u8>> =
        ["default", "paper-chip", "bit-serial"].iter().map(|n| n.as_bytes().to_vec()).collect();
    fuzz(
        "macro",
        seeds,
        true,
        |r, s| {
            let mut b = s.to_vec();
            if r.below(2) == 0 {
                mutate_bytes(r, &mut b);
            } else {
                // name, then 8 random field values as interesting integers
                b.push(0);
                for _ in 0..8 {
                    b.extend_from_slice(
                        &INTERESTING[r.below(INTERESTING.len())].to_le_bytes()[..4],
                    );
                }
            }
            b
        },
        |b| {
            let (name, fields) = match b.iter().position(|&c| c == 0) {
                Some(i) => (&b[..i], Some(&b[i + 1..])),
                None => (b, None),
            };
            let Ok(mut m) = MacroSpec::preset(&String::from_utf8_lossy(name)) else {
                return false;
            };
            if let Some(f) = fields.filter(|f| f.len() >= 32) {
                let v = |i: usize| i32::from_le_bytes(f[4 * i..4 * i + 4].try_into().unwrap());
                m.rows = v(0) as u32 as usize;
                m.input_bits = v(1) as u32;
                m.input_bits_per_cycle = v(2) as u32;
                m.weight_bits = v(3) as u32;
                m.adc.kmin = v(4);
                m.adc.kmax = v(5);
                m.arrays = v(6) as u32 as usize;
                m.columns = v(7) as u32 as usize;
            }
            if m.validate().is_err() {
                return false;
            }
            // A valid macro answers its questions without overflow.
            let _ = (m.tiles(4096), m.cycles(), m.adcs(), m.adc.levels(), m.describe());
            true
        },
    );
}

#[test]
fn data_archives() {
    // Small archives in the CIFAR-10 layout's names (the sizes are wrong, so a load
    // always ends in an error, but only after the tar headers, the member checks and the
    // gzip layer have run on the mutation).
    let dir = common::tmpdir("fuzz-archive");
    let file = dir.join("fuzz.tar.gz");
    let seeds = corpus("archive");
    fuzz(
        "archive",
        seeds,
        false,
        |r, s| {
            use std::io::{Read, Write};
            if r.below(5) == 0 {
                // The gzip bytes themselves.
                let mut b = s.to_vec();
                mutate_bytes(r, &mut b);
                return b;
            }
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(s).read_to_end(&mut tar).expect("seed archive inflates");
            for _ in 0..1 + r.below(3) {
                mutate_bytes(r, &mut tar);
            }
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            gz.finish().unwrap()
        },
        |b| {
            std::fs::write(&file, b).unwrap();
            Dataset::load(&file, DatasetKind::Cifar10).is_ok()
        },
    );
}
