//! The `dnat` command line. Each subcommand is a thin layer over the library.

use argh::FromArgs;
use std::process::ExitCode;

mod cli;

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
    Train(cli::train::TrainArgs),
    Eval(cli::eval::EvalArgs),
    Calibrate(cli::calibrate::CalibrateArgs),
    Bench(cli::bench::BenchArgs),
    Em(cli::em::EmArgs),
    Weights(cli::weights::WeightsArgs),
    Pipeline(cli::pipeline::PipelineArgs),
    Export(cli::export::ExportArgs),
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

fn main() -> ExitCode {
    signals();
    let top: Top = argh::from_env();
    dnat::engine::alloc::tune_allocator();
    if let Some(t) = top.threads {
        if !(1..=1024).contains(&t) {
            eprintln!("error: --threads must be 1 to 1024, got {t}");
            return ExitCode::from(2);
        }
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global().expect("thread pool set up once");
    }
    let result = match top.cmd {
        Cmd::Train(a) => cli::train::run(a),
        Cmd::Eval(a) => cli::eval::run(a),
        Cmd::Calibrate(a) => cli::calibrate::run(a),
        Cmd::Bench(a) => cli::bench::run(a),
        Cmd::Em(a) => cli::em::run(a),
        Cmd::Weights(a) => cli::weights::run(a),
        Cmd::Pipeline(a) => cli::pipeline::run(a),
        Cmd::Export(a) => cli::export::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

