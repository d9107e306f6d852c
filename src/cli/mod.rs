//! The `dnat` command line ([`main`]); each subcommand is a thin layer over the library.

pub mod bench;
pub mod calibrate;
pub mod deploy;
pub mod em;
pub mod eval;
pub mod export;
pub mod pipeline;
pub mod train;
pub mod weights;

use crate::Result;
use crate::cim::{CimRuntime, Estimator, MacroSpec, ReadoutMode};
use crate::data::{Dataset, DatasetKind, resolve_data_path};
use crate::nn::CimPlan;
use crate::train::ReadoutSource;
use argh::FromArgs;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// A CIM runtime from command-line words, the error model behind `source`.
pub fn cim_runtime(
    macro_name: &str,
    model: &str,
    readout: &str,
    estimator: &str,
    source: ReadoutSource,
) -> Result<CimRuntime> {
    let spec = MacroSpec::parse(macro_name)?;
    spec.validate()?;
    let em = crate::cim::em::resolve(model, &spec)?;
    CimRuntime::new(
        spec,
        source.wrap(Arc::new(em)),
        ReadoutMode::parse(readout)?,
        Estimator::parse(estimator)?,
    )
}

/// The CIM plan of a `--cim-layers` flag, its errors naming the flag.
pub fn cim_plan(words: &str) -> Result<CimPlan> {
    CimPlan::from_words(words).map_err(|e| crate::Error::invalid(format!("--cim-layers: {e}")))
}

/// Finds and loads the data set, saying which one was read (on stderr, unless `quiet`).
pub fn load_data(flag: Option<&Path>, kind: DatasetKind, quiet: bool) -> Result<Dataset> {
    let path = resolve_data_path(flag, kind)?;
    let t = std::time::Instant::now();
    let ds = Dataset::load(&path, kind)?;
    if !quiet {
        eprintln!(
            "data: {} — {} ({} train / {} test images, sha256 {}…, read in {:.1}s)",
            ds.provenance.path.display(),
            ds.provenance.description,
            ds.train.len(),
            ds.test.len(),
            &ds.provenance.sha256[..16],
            t.elapsed().as_secs_f64()
        );
    }
    Ok(ds)
}

#[derive(FromArgs)]
/// D-NAT: non-ideality aware training for computing-in-memory macros.
struct Top {
    #[argh(subcommand)]
    cmd: Cmd,
    /// worker threads (default: RAYON_NUM_THREADS, else all cores); results do not depend on it
    #[argh(option)]
    threads: Option<usize>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
enum Cmd {
    Train(train::TrainArgs),
    Eval(eval::EvalArgs),
    Calibrate(calibrate::CalibrateArgs),
    Bench(bench::BenchArgs),
    Em(em::EmArgs),
    Weights(weights::WeightsArgs),
    Pipeline(pipeline::PipelineArgs),
    Export(export::ExportArgs),
    Deploy(deploy::DeployArgs),
}

/// Signal set-up at start-up: restores the default SIGPIPE action, so `dnat … | head`
/// ends quietly instead of panicking on a closed stdout (Rust ignores SIGPIPE by
/// default); ignores SIGXFSZ, so a write past a file-size limit (`ulimit -f`) is an
/// error the atomic writer handles — its temporary file removed, the file named —
/// instead of killing the process mid-write.
fn signals() {
    #[cfg(target_os = "linux")]
    {
        unsafe extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIGXFSZ: i32 = 25;
        const SIG_DFL: usize = 0;
        const SIG_IGN: usize = 1;
        // SAFETY: setting two signals' actions at start-up, before threads exist.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
            signal(SIGXFSZ, SIG_IGN);
        }
    }
}

/// The `dnat` command line: parses the process's arguments, runs the subcommand, and
/// returns the exit code. A program that registers its own architectures first
/// ([`crate::nn::register`]) and then calls this has every `dnat` subcommand for them
/// (`train --model my-net`, `eval`, `export`, `pipeline` with `model = my-net`).
pub fn main() -> ExitCode {
    signals();
    let top: Top = argh::from_env();
    crate::engine::alloc::tune_allocator();
    if let Some(t) = top.threads {
        if !(1..=1024).contains(&t) {
            eprintln!("error: --threads must be 1 to 1024, got {t}");
            return ExitCode::from(2);
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .expect("thread pool set up once");
    }
    let result = match top.cmd {
        Cmd::Train(a) => train::run(a),
        Cmd::Eval(a) => eval::run(a),
        Cmd::Calibrate(a) => calibrate::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Em(a) => em::run(a),
        Cmd::Weights(a) => weights::run(a),
        Cmd::Pipeline(a) => pipeline::run(a),
        Cmd::Export(a) => export::run(a),
        Cmd::Deploy(a) => deploy::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
