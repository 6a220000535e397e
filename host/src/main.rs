//! `loom`: the command-line face of the Loom host.
//!
//! Exit codes: 0 success; 1 the operation ran but failed (a tool error, a
//! denial, a limit, a plugin that cannot load); 2 bad usage or configuration.

mod cli;

use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: loom_host::allocator::Allocator = loom_host::allocator::Allocator;

fn main() -> ExitCode {
    loom_host::allocator::tune();
    restore_sigpipe();
    let args = cli::Cli::parse();
    // After the config is read (it names the sinks), before the command runs.
    let telemetry = match cli::install_telemetry(&args) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("loom: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loom: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("loom: {error:#}");
            ExitCode::from(2)
        }
    };
    // Spans closed as the runtime shuts its tasks down are recorded too:
    // then the file is written out and OTLP (on its own runtime) exports
    // the rest.
    drop(runtime);
    drop(telemetry);
    code
}

/// Die quietly on a closed stdout (`loom plugins inspect x.wasm | head`), as
/// command-line tools do, instead of panicking on the failed write: Rust
/// ignores SIGPIPE by default.
#[cfg(unix)]
#[allow(
    unsafe_code,
    reason = "restoring the default SIGPIPE action is a single libc call"
)]
fn restore_sigpipe() {
    // SAFETY: called first thing in main, before any thread is spawned;
    // SIG_DFL is a valid action for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_sigpipe() {}
